"""Report writers over the plain report dict (schema portability-report/1).

json_report builds and writes the dict; terminal, junit and html render it; merge joins CI
shards; commands adds the `portability merge|report|baseline|matrix` subcommands.
"""
