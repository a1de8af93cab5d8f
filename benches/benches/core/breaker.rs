//! Group `breaker`: the closed path of a circuit breaker (admit a call, record its success), on
//! its own and through the registry, against an uncontended `std::sync::Mutex` increment.

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use criterion::Criterion;
use observers_core::breaker::{BreakerConfig, BreakerRegistry, CallOutcome, CircuitBreaker};
use observers_core::clock::system_clock;
use observers_core::telemetry::NoopTelemetry;

const ENDPOINT: &str = "host:80";

pub fn bench(c: &mut Criterion) {
    let breaker = CircuitBreaker::new(
        ENDPOINT,
        BreakerConfig::default(),
        system_clock(),
        Arc::new(NoopTelemetry),
    );
    let registry = BreakerRegistry::new(
        BreakerConfig::default(),
        system_clock(),
        Arc::new(NoopTelemetry),
    );
    let counter = Mutex::new(0_u64);

    let mut group = c.benchmark_group("breaker");
    group.bench_function("closed_path", |b| {
        b.iter(|| {
            let permit = black_box(&breaker).try_acquire().unwrap();
            breaker.record(permit, CallOutcome::Success);
        });
    });
    group.bench_function("registry_get_closed_path", |b| {
        b.iter(|| {
            let breaker = registry.get(black_box(ENDPOINT));
            let permit = breaker.try_acquire().unwrap();
            breaker.record(permit, CallOutcome::Success);
        });
    });
    group.bench_function("closed_path_baseline_mutex", |b| {
        b.iter(|| *black_box(&counter).lock().unwrap() += 1);
    });
    group.finish();
}
