//! `qrbench`: phygate's decode cascade against ZBar and ZXing-C++ on one seeded corpus.
//!
//! ```text
//! nice -n 19 cargo run --release --features bench --bin qrbench -- [options]
//!   --corpus DIR     corpus directory (default target/qrcorpus); generated when it has no manifest
//!   --regen          regenerate the corpus even if it exists
//!   --per-class N    images per damage class when generating (default 24)
//!   --seed S         corpus seed (default 1)
//!   --budget-ms N    phygate per-frame budget (default 150)
//!   --max-side N     phygate downscale limit (default 1280)
//!   --python PATH    interpreter for scripts/ref_decoders.py (default python3)
//!   --no-ref         phygate only (no Python)
//!   --repeat N       decodes per frame and decoder; ms is their median (default 3)
//!   --per-pass       instead: what each pass decodes alone, per class (diagnostics for tuning)
//!   --class NAME     only the frames of this class (repeatable)
//!   --per-file       also print each frame's result per decoder (found/expected, ms, pass)
//! ```
//!
//! Every decoder gets the same 8-bit grayscale pixels, loaded before timing; only the decode
//! call is timed. Time is the decoding thread's CPU time (`phygate_qr::clock`, CLOCK_THREAD_CPUTIME_ID,
//! `time.thread_time` on the Python side, both single-threaded decoders): the bench machine is
//! shared, and wall time there measures the other jobs as much as the decoder. Rate = expected
//! texts found / expected texts (first decode of each frame); ms = mean over frames of the
//! median of `--repeat` decodes' CPU time. The wall-clock means are printed after the table.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use phygate_qr::corpus::{Class, Entry, read_manifest, write_corpus};
use phygate_qr::{DecodeConfig, Pass, QrDecoder};

struct Args {
    corpus: PathBuf,
    regen: bool,
    per_class: usize,
    seed: u64,
    budget_ms: u64,
    max_side: u32,
    python: String,
    with_ref: bool,
    per_pass: bool,
    repeat: usize,
    classes: Vec<String>,
    per_file: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        corpus: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/qrcorpus"),
        regen: false,
        per_class: 24,
        seed: 1,
        budget_ms: 150,
        max_side: 1280,
        python: "python3".into(),
        with_ref: true,
        per_pass: false,
        repeat: 3,
        classes: Vec::new(),
        per_file: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--corpus" => a.corpus = val()?.into(),
            "--regen" => a.regen = true,
            "--per-class" => a.per_class = val()?.parse().map_err(|e| format!("{e}"))?,
            "--seed" => a.seed = val()?.parse().map_err(|e| format!("{e}"))?,
            "--budget-ms" => a.budget_ms = val()?.parse().map_err(|e| format!("{e}"))?,
            "--max-side" => a.max_side = val()?.parse().map_err(|e| format!("{e}"))?,
            "--python" => a.python = val()?,
            "--no-ref" => a.with_ref = false,
            "--per-pass" => a.per_pass = true,
            "--repeat" => a.repeat = val()?.parse().map_err(|e| format!("{e}"))?,
            "--class" => a.classes.push(val()?),
            "--per-file" => a.per_file = true,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(a)
}

/// One decoder's result on one frame.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    found: usize,
    wrong: usize,
    /// Decode CPU time of the decoding thread.
    ms: f64,
    wall_ms: f64,
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// CPU time consumed by the calling thread, in ms.
fn thread_cpu_ms() -> f64 {
    phygate_qr::clock::thread_cpu_time().map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

const DECODERS: [&str; 3] = ["phygate", "zbar", "zxing"];

/// Errors end the bench with a message (this is the CLI edge).
type BoxError = Box<dyn std::error::Error>;
/// One reference-decoder row: decoder, file, result.
type RefRow = (&'static str, String, Run);

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let manifest = args.corpus.join("manifest.tsv");
    let mut entries = if args.regen || !manifest.exists() {
        eprintln!("generating corpus in {} ...", args.corpus.display());
        write_corpus(&args.corpus, args.per_class, args.seed)?
    } else {
        read_manifest(&manifest)?
    };
    if !args.classes.is_empty() {
        entries.retain(|e| args.classes.contains(&e.class));
    }
    if args.per_pass {
        return per_pass(&args, &entries);
    }
    // results[decoder][file]
    let mut results: HashMap<&str, HashMap<String, Run>> = HashMap::new();
    let mut by_pass: BTreeMap<String, usize> = BTreeMap::new();
    results.insert("phygate", run_phygate(&args, &entries, &mut by_pass)?);
    if args.with_ref {
        for (dec, file, run) in run_reference(&args, &manifest)? {
            // The script reads the whole manifest; keep the frames this run looks at.
            if entries.iter().any(|e| e.file == file) {
                results.entry(dec).or_default().insert(file, run);
            }
        }
    }
    if args.per_file {
        print_per_file(&entries, &results);
    }
    print_table(&entries, &results);
    for d in DECODERS {
        if let Some(r) = results.get(d) {
            let wall: f64 = r.values().map(|r| r.wall_ms).sum::<f64>() / r.len().max(1) as f64;
            eprintln!("{d}: mean wall-clock ms per frame {wall:.2}");
        }
    }
    eprintln!("phygate: codes by decoding pass: {by_pass:?}");
    for d in DECODERS {
        let wrong: usize = results
            .get(d)
            .map_or(0, |r| r.values().map(|r| r.wrong).sum());
        eprintln!("{d}: {wrong} decoded texts that were not in the frame");
    }
    Ok(())
}

/// One line per frame: expected texts, then found and ms per decoder (diagnostics).
fn print_per_file(entries: &[Entry], results: &HashMap<&str, HashMap<String, Run>>) {
    for e in entries {
        let mut line = format!("{} expected {}", e.file, e.texts.len());
        for d in DECODERS {
            if let Some(r) = results.get(d).and_then(|r| r.get(&e.file)) {
                line += &format!(" {d} {} ({:.2} ms)", r.found, r.ms);
            }
        }
        eprintln!("{line}");
    }
}

fn load(args: &Args, entries: &[Entry]) -> Result<Vec<image::GrayImage>, image::ImageError> {
    entries
        .iter()
        .map(|e| image::open(args.corpus.join(&e.file)).map(|i| i.to_luma8()))
        .collect()
}

/// Per class: expected texts each pass decodes on its own (and its mean ms), then the whole
/// cascade without a budget — what the passes can reach together.
fn per_pass(args: &Args, entries: &[Entry]) -> Result<(), BoxError> {
    let frames = load(args, entries)?;
    let dec = QrDecoder::new(DecodeConfig {
        roi: None,
        max_side: args.max_side,
        budget: Duration::from_secs(3600),
    });
    let mut header = String::from("class");
    for p in Pass::CASCADE {
        header += &format!(" {0}_found {0}_ms", pass_name(p));
    }
    println!("{header} cascade_found expected");
    let mut classes: Vec<&str> = Vec::new();
    for e in entries {
        if !classes.contains(&e.class.as_str()) {
            classes.push(&e.class);
        }
    }
    for class in classes {
        let mut line = class.to_string();
        let idx: Vec<usize> = (0..entries.len())
            .filter(|&i| entries[i].class == class)
            .collect();
        let hits = |codes: &[phygate_qr::DecodedCode], e: &Entry| {
            e.texts
                .iter()
                .filter(|t| codes.iter().any(|c| &c.text == *t))
                .count()
        };
        for p in Pass::CASCADE {
            let (mut found, mut ms) = (0, 0.0);
            for &i in &idx {
                let t0 = Instant::now();
                let codes = dec.run_pass(&frames[i], p).unwrap_or_default();
                ms += t0.elapsed().as_secs_f64() * 1000.0;
                found += hits(&codes, &entries[i]);
            }
            line += &format!(" {found} {:.2}", ms / idx.len() as f64);
        }
        let all: usize = idx
            .iter()
            .map(|&i| hits(&dec.decode(&frames[i]), &entries[i]))
            .sum();
        let expected: usize = idx.iter().map(|&i| entries[i].texts.len()).sum();
        println!("{line} {all} {expected}");
    }
    Ok(())
}

fn run_phygate(
    args: &Args,
    entries: &[Entry],
    by_pass: &mut BTreeMap<String, usize>,
) -> Result<HashMap<String, Run>, BoxError> {
    // Load every frame before timing anything: PNG decoding is not part of the pipeline.
    let frames = load(args, entries)?;
    let dec = QrDecoder::new(DecodeConfig {
        roi: None,
        max_side: args.max_side,
        budget: Duration::from_millis(args.budget_ms),
    });
    if let Some(f) = frames.first() {
        dec.decode(f); // warm-up, as for the reference decoders
    }
    let mut out = HashMap::new();
    for (e, f) in entries.iter().zip(&frames) {
        // Rates come from the first run; times are the median of `repeat` runs, which keeps a
        // burst of load on the shared machine out of the figure.
        let mut times = Vec::with_capacity(args.repeat);
        let mut codes = Vec::new();
        for i in 0..args.repeat.max(1) {
            let (t0, c0) = (Instant::now(), thread_cpu_ms());
            let got = dec.decode(f);
            times.push((thread_cpu_ms() - c0, t0.elapsed().as_secs_f64() * 1000.0));
            if i == 0 {
                codes = got;
            }
        }
        let (ms, wall_ms) = (
            median(times.iter().map(|t| t.0)),
            median(times.iter().map(|t| t.1)),
        );
        let found = e
            .texts
            .iter()
            .filter(|t| codes.iter().any(|c| &c.text == *t))
            .count();
        let wrong = codes.iter().filter(|c| !e.texts.contains(&c.text)).count();
        for c in &codes {
            let polarity = if c.inverted { "inverted_" } else { "" };
            *by_pass
                .entry(format!("{polarity}{}", pass_name(c.pass)))
                .or_default() += 1;
        }
        out.insert(
            e.file.clone(),
            Run {
                found,
                wrong,
                ms,
                wall_ms,
            },
        );
    }
    Ok(out)
}

fn pass_name(p: Pass) -> &'static str {
    match p {
        Pass::Plain => "plain",
        Pass::Adaptive => "adaptive",
        Pass::Stretched => "stretched",
        Pass::Upscaled => "upscaled",
    }
}

/// Runs `scripts/ref_decoders.py` once for the whole corpus and parses its rows.
fn run_reference(args: &Args, manifest: &std::path::Path) -> Result<Vec<RefRow>, BoxError> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/ref_decoders.py");
    let out = Command::new(&args.python)
        .arg(&script)
        .arg(manifest)
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let mut rows = Vec::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let [file, dec, found, wrong, ms, wall_ms] = f[..] else {
            return Err(format!("bad line from {}: {line:?}", script.display()).into());
        };
        let dec = match dec {
            "zbar" => "zbar",
            "zxing" => "zxing",
            other => return Err(format!("unknown decoder {other:?}").into()),
        };
        let run = Run {
            found: found.parse()?,
            wrong: wrong.parse()?,
            ms: ms.parse()?,
            wall_ms: wall_ms.parse()?,
        };
        rows.push((dec, file.to_string(), run));
    }
    Ok(rows)
}

/// Rate and mean ms per decoder over `files`; `NaN` where a decoder did not run. On code-free
/// frames the rate is the share of frames where nothing was decoded.
fn summarize(files: &[&Entry], results: &HashMap<&str, HashMap<String, Run>>) -> Vec<(f64, f64)> {
    let expected: usize = files.iter().map(|e| e.texts.len()).sum();
    DECODERS
        .iter()
        .map(|d| {
            let Some(r) = results.get(d) else {
                return (f64::NAN, f64::NAN);
            };
            let runs: Vec<Run> = files
                .iter()
                .filter_map(|e| r.get(&e.file).copied())
                .collect();
            let ms: f64 = runs.iter().map(|r| r.ms).sum::<f64>() / runs.len().max(1) as f64;
            let rate = if expected == 0 {
                let clean = runs.iter().filter(|r| r.wrong == 0).count();
                clean as f64 / runs.len().max(1) as f64
            } else {
                let found: usize = runs.iter().map(|r| r.found).sum();
                found as f64 / expected as f64
            };
            (rate, ms)
        })
        .collect()
}

fn print_table(entries: &[Entry], results: &HashMap<&str, HashMap<String, Run>>) {
    println!("class phygate_rate zbar_rate zxing_rate phygate_ms zbar_ms zxing_ms");
    let row = |name: &str, files: Vec<&Entry>| {
        let s = summarize(&files, results);
        println!(
            "{name} {:.3} {:.3} {:.3} {:.2} {:.2} {:.2}",
            s[0].0, s[1].0, s[2].0, s[0].1, s[1].1, s[2].1
        );
    };
    // Classes in generator order, then any the manifest has that the generator does not know.
    let mut classes: Vec<String> = Class::ALL.iter().map(|c| c.name().to_string()).collect();
    for e in entries {
        if !classes.contains(&e.class) {
            classes.push(e.class.clone());
        }
    }
    for c in &classes {
        let files: Vec<&Entry> = entries.iter().filter(|e| &e.class == c).collect();
        if !files.is_empty() {
            row(c, files);
        }
    }
    // Overall rows: frames with a code (code-free frames measure cost, not reading).
    let coded = |e: &&Entry| !e.texts.is_empty();
    row("overall", entries.iter().filter(coded).collect());
    // The time target is per 640x480 frame: the 1280x720 classes are left out of this row.
    let wide: Vec<&str> = Class::ALL
        .iter()
        .filter(|c| c.size() != Class::Clean.size())
        .map(|c| c.name())
        .collect();
    row(
        "overall_640x480",
        entries
            .iter()
            .filter(coded)
            .filter(|e| !wide.contains(&e.class.as_str()))
            .collect(),
    );
    // Code-free frames: the worst one matters too (a camera pays it at every frame).
    for c in Class::ALL.iter().filter(|c| c.code_free()) {
        let worst = |d: &str| {
            results.get(d).map_or(f64::NAN, |r| {
                entries
                    .iter()
                    .filter(|e| e.class == c.name())
                    .filter_map(|e| r.get(&e.file).map(|r| r.ms))
                    .fold(0.0, f64::max)
            })
        };
        eprintln!(
            "{}: max ms per frame phygate {:.2} zbar {:.2} zxing {:.2}",
            c.name(),
            worst("phygate"),
            worst("zbar"),
            worst("zxing")
        );
    }
}
