"""The pipeline stages, one module each: ``run_<stage>(ctx) -> manifest fields``."""
