"""The revisions, one module each, applied in order by ``triage db upgrade``."""
