"""Apply logic, pytest-free: facts (read-only queries), ops (idempotent changes), the runner
(one host, one SSH connection, apply/check/verify modes), artifacts and redaction. Team
modules here compose them; the phases/ test modules call the teams' apply functions."""
