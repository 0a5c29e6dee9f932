-- wrk script: cycle through a file of request paths (one per line) with a fixed Accept header,
-- and print one JSON line of results at the end.
--
--   wrk -t4 -c4 -d5s --latency -s bench/paths.lua http://127.0.0.1:PORT -- paths.txt "application/dicom+json"
--
-- Each wrk thread starts at a different offset of the list, so the threads do not ask
-- for the same resource at the same time. No response() callback: defining one makes
-- wrk parse every body in Lua and would make the client the bottleneck.

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

local paths = {}
local counter = 0

function init(args)
   local file = args[1]
   for line in io.lines(file) do
      if #line > 0 then
         table.insert(paths, line)
      end
   end
   if #paths == 0 then
      error("no paths in " .. file)
   end
   if args[2] and #args[2] > 0 then
      wrk.headers["Accept"] = args[2]
   end
   counter = (id or 0) * math.floor(#paths / 4 + 1)
end

function request()
   counter = counter + 1
   return wrk.format("GET", paths[(counter % #paths) + 1])
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
      '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
      '"latency_us": {"p50": %d, "p95": %d, "p99": %d, "mean": %.1f, "max": %d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.mean, latency.max))
end
