"""The preference study behind the paper's Table 7: trials drawn from finished runs, a SQLite database of
participants and votes, a small local web app to collect the votes, and the table rendered from them.

Modules: `config` (the study's settings), `db` (schema, tokens, participants), `trials` (assignment, candidate
order, deliveries and votes), `draw` (trials from run records), `app` (the web app), `page` and `static/` (the
participant's page, its script and style), `table` (Table 7 with bootstrap intervals), `commands` (what the CLI
calls).
"""
