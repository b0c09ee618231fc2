//! `/metrics` in the Prometheus text exposition format (version 0.0.4).

use std::fmt::Write;

use super::board::DeviceView;
use super::pipeline::Pipeline;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every process metric, then the per-device ones and the pipeline's verdict.
pub fn render(devices: &[DeviceView], pipeline: &Pipeline) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for (name, kind, help, value) in crate::metrics::snapshot() {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }

    devices_part(&mut out, devices);
    latency_and_tokens(&mut out);
    pipeline_part(&mut out, pipeline);
    out
}

/// Per device: readings, up, last reading.
fn devices_part(out: &mut String, devices: &[DeviceView]) {
    header(
        out,
        "phygate_device_readings_total",
        "counter",
        "readings taken from each device since start",
    );
    for d in devices {
        let _ = writeln!(
            out,
            "phygate_device_readings_total{{{}}} {}",
            labels(d),
            d.readings
        );
    }
    header(
        out,
        "phygate_device_up",
        "gauge",
        "1 while the device is connected (ok, silent or erring), 0 when unplugged or not heard yet",
    );
    for d in devices {
        let _ = writeln!(
            out,
            "phygate_device_up{{{}}} {}",
            labels(d),
            u8::from(d.state.is_up())
        );
    }
    header(
        out,
        "phygate_device_last_reading_timestamp_seconds",
        "gauge",
        "unix time of the device's last reading (absent before the first)",
    );
    for d in devices {
        if let Some(t) = d.last_reading {
            let s = t
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            let _ = writeln!(
                out,
                "phygate_device_last_reading_timestamp_seconds{{{}}} {s:.3}",
                labels(d)
            );
        }
    }
}

/// The publish latency histogram and the token verdicts.
fn latency_and_tokens(out: &mut String) {
    let (buckets, sum, count) = crate::metrics::PUBLISH_LATENCY.read();
    let name = "phygate_publish_latency_seconds";
    header(
        out,
        name,
        "histogram",
        "from publishing a batch to the broker's PUBACK",
    );
    for (le, n) in buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum}");
    let _ = writeln!(out, "{name}_count {count}");

    let verdicts = &crate::metrics::TOKEN_VERDICTS;
    header(
        out,
        "phygate_token_verdicts_total",
        "counter",
        "app tokens checked, by verdict (docs/protocols.md §5)",
    );
    for (v, n) in verdicts.read() {
        let _ = writeln!(
            out,
            "phygate_token_verdicts_total{{{}=\"{v}\"}} {n}",
            verdicts.label
        );
    }
}

/// The pipeline's verdict: outbox answering, link draining, oldest unsent event.
fn pipeline_part(out: &mut String, pipeline: &Pipeline) {
    header(
        out,
        "phygate_outbox_answering",
        "gauge",
        "1 while the outbox thread answers within its deadline",
    );
    let _ = writeln!(
        out,
        "phygate_outbox_answering {}",
        u8::from(pipeline.outbox_answering)
    );
    header(
        out,
        "phygate_link_draining",
        "gauge",
        "1 while the link takes readings off its queue",
    );
    let _ = writeln!(
        out,
        "phygate_link_draining {}",
        u8::from(pipeline.link_draining)
    );
    if let Some(oldest) = pipeline.stats.as_ref().and_then(|s| s.oldest_ms) {
        header(
            out,
            "phygate_outbox_oldest_unsent_timestamp_seconds",
            "gauge",
            "event time of the oldest event not yet acknowledged by HQ",
        );
        let _ = writeln!(
            out,
            "phygate_outbox_oldest_unsent_timestamp_seconds {:.3}",
            oldest as f64 / 1000.0
        );
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn labels(d: &DeviceView) -> String {
    format!(
        "device=\"{}\",kind=\"{}\",station=\"{}\"",
        escape(&d.id),
        escape(&d.kind),
        escape(&d.station)
    )
}

/// Label values: backslash, quote and newline escaped (ids are plain, but be correct).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
