"""Operations: metrics, health and readiness, the JSON log observer, the drain on SIGTERM."""
