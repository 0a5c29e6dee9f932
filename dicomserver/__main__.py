"""`python -m dicomserver ...`: the `dicomserver` command where its script is not on PATH."""
from .cli import main

main(prog_name="dicomserver")
