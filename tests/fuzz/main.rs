//! A mutation fuzzer that runs on stable Rust, in CI and for long runs: each
//! target of [`targets`] is fed mutants ([`mutate`]) of its seed corpus for a
//! while, and any input that panics fails the test and is saved (with the
//! panic message) under `$CARGO_TARGET_TMPDIR/fuzz-crashes/`. An input whose
//! outcome (its error's text with the numbers taken out, or what was read) is
//! new joins the corpus, so mutation goes on from inputs that reached other
//! checks; this stands in for coverage feedback (that needs a nightly compiler and a second build of every
//! dependency with instrumentation, which this project's 2-core machines
//! cannot afford).
//!
//! CI runs each target for `FUZZ_SECONDS` (default 2). Long runs:
//! `FUZZ_SECONDS=600 FUZZ_TARGETS=job_yaml,vectors cargo test --release --test fuzz -- --nocapture`;
//! `FUZZ_SAVE_CURRENT=1` saves each input before it runs (`<target>-current.bin`), to find one
//! that aborts the process (a stack overflow) when rerun with the same `FUZZ_SEED`;
//! `FUZZ_REPLAY=FILE` runs one saved input and prints what came of it.

mod mutate;
mod targets;

use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An input slower than this is reported like a crash (a hang in the making).
const SLOW: Duration = Duration::from_secs(10);
const MAX_CORPUS: usize = 512;
const MAX_INPUT: usize = 1 << 20;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Outcome {
    executions: u64,
    /// Distinct outcomes seen.
    outcomes: usize,
    corpus: usize,
    faults: Vec<String>,
}

fn fuzz(t: &targets::Target, seconds: u64, seed: u64, crashes: &std::path::Path) -> Outcome {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut corpus = (t.seeds)();
    let mut out = Outcome { executions: 0, outcomes: 0, corpus: 0, faults: vec![] };
    let mut seen = std::collections::HashSet::new();
    let last_panic: Arc<Mutex<Option<String>>> = Arc::default();
    let hook_panic = last_panic.clone();
    std::panic::set_hook(Box::new(move |info| {
        *hook_panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.to_string());
    }));
    // The seeds first, unmutated; then mutants until the time is up.
    let seeds = corpus.len();
    let save_current = std::env::var("FUZZ_SAVE_CURRENT").is_ok();
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut i = 0usize;
    while i < seeds || Instant::now() < end {
        let input = if i < seeds {
            corpus[i].clone()
        } else {
            // Half the mutants come from a seed, so that most inputs stay deep in the format.
            let from = if rng.gen() { rng.gen_range(0..seeds) } else { rng.gen_range(0..corpus.len()) };
            let base = &corpus[from];
            let mut m = mutate::mutate(&mut rng, base, &corpus, t.text);
            m.truncate(MAX_INPUT);
            m
        };
        i += 1;
        if save_current {
            // A stack overflow aborts the process: the input that did it is the last one saved.
            std::fs::create_dir_all(crashes).unwrap();
            std::fs::write(crashes.join(format!("{}-current.bin", t.name)), &input).unwrap();
        }
        let started = Instant::now();
        let result = std::panic::catch_unwind(|| (t.run)(&input));
        let took = started.elapsed();
        out.executions += 1;
        let fault = match result {
            Err(_) => Some(last_panic.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default()),
            Ok(_) if took > SLOW => Some(format!("took {took:?}")),
            Ok(what) => {
                if seen.insert(shape_of(&what)) {
                    if corpus.len() < MAX_CORPUS {
                        corpus.push(input.clone());
                    } else {
                        let slot = rng.gen_range(seeds..MAX_CORPUS);
                        corpus[slot] = input.clone();
                    }
                }
                None
            }
        };
        if let Some(why) = fault {
            std::fs::create_dir_all(crashes).unwrap();
            let n = out.faults.len();
            let file = crashes.join(format!("{}-{n}.bin", t.name));
            std::fs::write(&file, &input).unwrap();
            std::fs::write(file.with_extension("txt"), &why).unwrap();
            out.faults.push(format!("{}: {why}", file.display()));
            if out.faults.len() >= 20 {
                break;
            }
        }
    }
    let _ = std::panic::take_hook();
    out.corpus = corpus.len();
    out.outcomes = seen.len();
    out
}

/// An outcome without what varies from input to input: numbers, quoted
/// text, and anything past the first 80 characters.
fn shape_of(what: &str) -> String {
    let mut out = String::new();
    let mut quote = None;
    for c in what.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '"' | '`' | '\'') => quote = Some(c),
            None if !c.is_ascii_digit() => out.push(c),
            None => {}
        }
    }
    out.chars().take(80).collect()
}

#[test]
fn no_input_makes_a_reader_panic() {
    let seconds = env_or("FUZZ_SECONDS", 2u64);
    let seed = env_or("FUZZ_SEED", 1u64);
    let only: Option<Vec<String>> =
        std::env::var("FUZZ_TARGETS").ok().map(|s| s.split(',').map(String::from).collect());
    let crashes = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
    if let Ok(file) = std::env::var("FUZZ_REPLAY") {
        // One saved input against the chosen targets, to see what it does.
        let input = std::fs::read(&file).unwrap();
        for t in targets::all().iter().filter(|t| only.as_ref().is_none_or(|o| o.iter().any(|n| n == t.name))) {
            println!("{}: {}", t.name, (t.run)(&input));
        }
        return;
    }
    let total = AtomicU64::new(0);
    let mut faults = vec![];
    for t in targets::all() {
        if only.as_ref().is_some_and(|o| !o.iter().any(|n| n == t.name)) {
            continue;
        }
        let started = Instant::now();
        let o = fuzz(&t, seconds, seed, &crashes);
        total.fetch_add(o.executions, Ordering::Relaxed);
        println!(
            "fuzz {:<12} {:>9} executions in {:>6.1} s ({} distinct outcomes, corpus {}), {} faults",
            t.name,
            o.executions,
            started.elapsed().as_secs_f64(),
            o.outcomes,
            o.corpus,
            o.faults.len()
        );
        faults.extend(o.faults);
    }
    assert!(total.load(Ordering::Relaxed) > 0, "no target ran (FUZZ_TARGETS?)");
    assert!(faults.is_empty(), "inputs that panicked or hung:\n{}", faults.join("\n"));
}
