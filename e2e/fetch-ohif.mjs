// The prebuilt OHIF viewer, unpacked into e2e/.cache/ohif-app-<version>/ (git-ignored).
//
// `npm install @ohif/app` would pull the viewer's whole source dependency tree (and some of
// its pinned @ohif/* siblings are not published), while its tarball already ships the built
// `dist/`. So the version and the tarball's integrity are pinned in package.json's `config`
// and the tarball alone is fetched with `npm pack` (through npm's own cache, outside git),
// checked against that integrity, and unpacked. Nothing is written into node_modules.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const { ohifApp: version, ohifAppIntegrity: integrity } = JSON.parse(
  readFileSync(join(here, 'package.json'), 'utf8'),
).config;
const cache = join(here, '.cache');
const target = join(cache, `ohif-app-${version}`);
const stamp = join(target, '.integrity');

if (existsSync(stamp) && readFileSync(stamp, 'utf8') === integrity) {
  console.log(`OHIF ${version}: ${target}`);
  process.exit(0);
}

mkdirSync(cache, { recursive: true });
const work = mkdtempSync(join(cache, 'fetch-'));
try {
  const packed = JSON.parse(
    execFileSync('npm', ['pack', `@ohif/app@${version}`, '--json', '--pack-destination', work], {
      cwd: work,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    }),
  )[0];
  const tarball = join(work, packed.filename);
  const [algorithm, expected] = integrity.split('-', 2);
  const actual = createHash(algorithm).update(readFileSync(tarball)).digest('base64');
  if (actual !== expected) {
    throw new Error(`@ohif/app@${version}: tarball ${algorithm} is ${actual}, package.json pins ${expected}`);
  }
  execFileSync('tar', ['xzf', tarball, '-C', work], { stdio: 'inherit' });
  if (!existsSync(join(work, 'package', 'dist', 'index.html'))) {
    throw new Error(`@ohif/app@${version} ships no dist/index.html`);
  }
  writeFileSync(join(work, 'package', '.integrity'), integrity);
  rmSync(target, { recursive: true, force: true });
  renameSync(join(work, 'package'), target);
  console.log(`OHIF ${version}: unpacked into ${target}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
