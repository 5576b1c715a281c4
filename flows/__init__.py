"""flows: Prefect flows that orchestrate the lafs stages; no science lives here."""
