"""The pure rules that the API and the engine both read: dataset formats and validation, the job
hyper-parameter table and its "auto" rules, the model registry, the measured throughput table and the job
and merge state machines. Pure Python: no database, no broker, no torch (an import-linter contract)."""
