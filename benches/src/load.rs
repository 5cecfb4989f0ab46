//! A closed loop: each worker sends one request, waits for the response, repeats.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full};

use crate::client::Sender;

/// A request every worker repeats. A `{worker}` in the path becomes the
/// worker's index, so each worker can ask for its own resource.
#[derive(Clone)]
pub struct RequestTemplate {
    pub method: Method,
    pub path: String,
    pub body: Bytes,
    pub authorization: String,
}

/// Results of a measured run; latencies in microseconds.
pub struct Report {
    latencies_us: Vec<u64>,
    elapsed: Duration,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Whether the last recorded request failed.
    last_failed: bool,
}

impl Report {
    /// Returns a report of no requests, for a run measured for `elapsed`.
    pub fn empty(elapsed: Duration) -> Report {
        Report {
            latencies_us: Vec::new(),
            elapsed,
            ok: 0,
            errors: 0,
            first_error: None,
            last_failed: false,
        }
    }

    /// Records one request that started at `started`; only `measured` ones count.
    pub fn record(&mut self, outcome: Result<(), String>, started: Instant, measured: bool) {
        self.last_failed = outcome.is_err();
        match outcome {
            Ok(()) if measured => {
                self.ok += 1;
                self.latencies_us.push(started.elapsed().as_micros() as u64);
            }
            Ok(()) => {}
            Err(e) => {
                if measured {
                    self.errors += 1;
                }
                if self.first_error.is_none() {
                    self.first_error = Some(e);
                }
            }
        }
    }

    pub fn failed_last(&self) -> bool {
        self.last_failed
    }

    /// Adds a worker's requests to this report.
    pub fn merge(&mut self, other: Report) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Sorts the latencies, which `percentile_ms` needs; call after the last merge.
    pub fn finish(&mut self) {
        self.latencies_us.sort_unstable();
    }

    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Returns the `p`th percentile latency in milliseconds (nearest rank), 0 with no samples.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies_us.len()) - 1;
        self.latencies_us[index] as f64 / 1000.0
    }

    /// Prints the one-line summary that `benches/*.sh` parse, and the first error.
    pub fn print(&self, name: &str, concurrency: usize, connections: usize) {
        println!(
            "{name}: concurrency {concurrency} connections {connections} duration {} s: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms, {} ok, {} errors",
            self.elapsed.as_secs(),
            self.per_second(),
            self.percentile_ms(50.0),
            self.percentile_ms(99.0),
            self.percentile_ms(100.0),
            self.ok,
            self.errors,
        );
        if let Some(sample) = &self.first_error {
            println!("{name}: first error: {sample}");
        }
    }
}

pub async fn run(
    senders: Vec<Sender>,
    request: RequestTemplate,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Report {
    let request = std::sync::Arc::new(request);
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop_at = measure_from + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let sender = senders[i % senders.len()].clone();
        let request = match request.path.contains("{worker}") {
            true => std::sync::Arc::new(RequestTemplate {
                path: request.path.replace("{worker}", &i.to_string()),
                ..(*request).clone()
            }),
            false => request.clone(),
        };
        workers.push(tokio::spawn(worker(
            sender,
            request,
            duration,
            measure_from,
            stop_at,
        )));
    }
    let mut report = Report::empty(duration);
    for worker in workers {
        report.merge(worker.await.expect("worker task"));
    }
    report.finish();
    report
}

async fn worker(
    mut sender: Sender,
    request: std::sync::Arc<RequestTemplate>,
    duration: Duration,
    measure_from: Instant,
    stop_at: Instant,
) -> Report {
    let mut report = Report::empty(duration);
    loop {
        let started = Instant::now();
        if started >= stop_at {
            return report;
        }
        let outcome = send_one(&mut sender, &request).await;
        let measured = started >= measure_from && Instant::now() <= stop_at;
        report.record(outcome, started, measured);
        if report.failed_last() {
            // A failed connection fails at once; pause so an error loop stays bounded.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn send_one(sender: &mut Sender, request: &RequestTemplate) -> Result<(), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::builder()
        .method(request.method.clone())
        .uri(format!("https://localhost{}", request.path))
        .header(http::header::AUTHORIZATION, &request.authorization)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(request.body.clone()))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    Ok(())
}
