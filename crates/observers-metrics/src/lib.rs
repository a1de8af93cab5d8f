//! Prometheus metrics fed by core telemetry, and the ops HTTP server. Filled by the observers-metrics issue (#7); nothing here yet.
