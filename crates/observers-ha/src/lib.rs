//! Fenced leases, listener state machine, coordinator, failover and partition assignment. Filled by the observers-ha issue (#8); nothing here yet.
