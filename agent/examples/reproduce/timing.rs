//! Wall and CPU time of the engine's steps.

use super::*;

#[path = "../common/proc_stats.rs"]
mod proc_stats;

/// Wall-clock and CPU time (user + system, all threads of this process) since `start`. CPU time
/// is less sensitive to other processes on a shared machine than wall time.
pub(crate) struct Clock {
    pub(crate) wall: Instant,
    pub(crate) cpu: f64,
}

impl Clock {
    pub(crate) fn start() -> Clock {
        Clock { wall: Instant::now(), cpu: cpu_seconds() }
    }
    pub(crate) fn wall(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }
    pub(crate) fn cpu(&self) -> f64 {
        cpu_seconds() - self.cpu
    }
}

/// utime + stime of this process (`common/proc_stats.rs`); NaN where /proc does not say.
pub(crate) fn cpu_seconds() -> f64 {
    proc_stats::cpu_seconds_of("self").unwrap_or(f64::NAN)
}

pub(crate) struct Timing {
    pub(crate) model: String,
    pub(crate) config: String,
    pub(crate) what: String,
    pub(crate) n: usize,
    pub(crate) batch: usize,
    pub(crate) seconds: f64,
    pub(crate) cpu_seconds: f64,
}

impl Timing {
    pub(crate) fn new(
        model: &str,
        config: &str,
        what: &str,
        n: usize,
        batch: usize,
        wall: f64,
        cpu: f64,
    ) -> Timing {
        Timing {
            model: model.into(),
            config: config.into(),
            what: what.into(),
            n,
            batch,
            seconds: wall,
            cpu_seconds: cpu,
        }
    }
    pub(crate) fn of(model: &str, config: &str, what: &str, n: usize, batch: usize, clock: &Clock) -> Timing {
        Timing::new(model, config, what, n, batch, clock.wall(), clock.cpu())
    }
    pub(crate) fn per_sample_ms(&self) -> f64 {
        1000.0 * self.seconds / self.n.max(1) as f64
    }
    pub(crate) fn cpu_per_sample_ms(&self) -> f64 {
        1000.0 * self.cpu_seconds / self.n.max(1) as f64
    }
    pub(crate) fn json(&self) -> Value {
        json!({"model": self.model, "config": self.config, "what": self.what, "n": self.n, "batch": self.batch,
               "seconds": self.seconds, "per_sample_ms": self.per_sample_ms(),
               "cpu_seconds": self.cpu_seconds, "cpu_per_sample_ms": self.cpu_per_sample_ms()})
    }
}

pub(crate) fn write_timing(path: &Path, t: &[Timing]) -> Result<()> {
    let mut s =
        String::from("model,config,what,n,batch,seconds,per_sample_ms,cpu_seconds,cpu_per_sample_ms\n");
    for x in t {
        writeln!(
            s,
            "{},{},{},{},{},{:.4},{:.3},{:.2},{:.3}",
            x.model,
            x.config,
            x.what,
            x.n,
            x.batch,
            x.seconds,
            x.per_sample_ms(),
            x.cpu_seconds,
            x.cpu_per_sample_ms()
        )?;
    }
    std::fs::write(path, s)?;
    Ok(())
}

pub(crate) fn digit_timing(args: &Args, reference: &ArrayD<f32>, out: &mut Vec<Timing>) -> Result<()> {
    let layers = "conv2_in+block2_out; vanilla+actgrad+gradcam";
    for (samples, n, batch) in [(1usize, 256usize, 16usize), (1, 32, 1), (16, 64, 4), (50, 32, 4)] {
        let mut sp = spec(Path::new(ENCODER), &DIGIT_LAYERS, &Method::ALL, args.threads);
        sp.score.smoothing_points = Some(samples);
        sp.score.smoothing = Some(if samples > 1 { 0.5 } else { 0.0 });
        let t = Clock::start();
        let mut e = Engine::new(&sp)?;
        let setup = Timing::of("digits", "", "Engine::new (compile + session + noise maps)", 1, 1, &t);
        let data = digit_subset(reference, n);
        // One warm-up batch, not timed.
        e.score_all(data.slice_axis(Axis(0), ndarray::Slice::from(0..batch)), batch)?;
        let t = Clock::start();
        e.score_all(data.view(), batch)?;
        let config = format!("exact D=32 S={samples}; {layers}");
        out.push(Timing::of("digits", &config, "score_batch", n, batch, &t));
        out.push(Timing { config, ..setup });
    }
    Ok(())
}
