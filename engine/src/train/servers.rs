//! The driver's side of `async` training: the job's parameter-server
//! shards ([`crate::ps::shard`]), hosted in the driver's process or by
//! `kallista ps` processes ([`crate::ps::host`]), made from the model's
//! weights and optimizer state, and read back into it between segments,
//! when no worker runs: the weights version, evaluations and checkpoints
//! see one consistent state of every shard.

use super::metrics::WorkerLine;
use crate::collective::frame::Secret;
use crate::error::{EngineError, Result};
use crate::ps::host::{read_token, RemoteShard};
use crate::ps::momentum::MomentumCompensation;
use crate::ps::shard::{Shard, ShardRules, SliceState};
use crate::ps::slices::plan;
use crate::ps::wire::{ShardStats, WorkerStats};
use kallista_ops::buf::Buf;
use kallista_ops::model::Model;
use kallista_ops::optim::{Optimizer, OptimizerConfig};
use std::collections::BTreeMap;

/// How an `async` job uses its parameter servers.
#[derive(Clone, Debug, PartialEq)]
pub struct AsyncSettings {
    /// Shards the weights are split into (balanced by bytes).
    pub parameter_servers: usize,
    /// Steps a worker takes (on the same weights) between pushes.
    pub push_every_steps: u64,
    /// A gradient computed on weights older than this many versions is dropped.
    pub max_staleness: Option<u64>,
    /// Apply pushes without the shard's lock.
    pub hogwild: bool,
    /// Apply a gradient `τ > 1` versions old with `learning_rate / τ`.
    pub divide_lr_by_staleness: bool,
    /// Run the shards' Adam with `beta_1` lowered for the pushes' staleness ([`MomentumCompensation`]).
    pub compensate_momentum: bool,
    /// `kallista ps` processes (`host:port`) hosting the shards, one each, in
    /// shard order; none: the driver hosts them.
    pub hosts: Vec<String>,
    /// The cluster's token, which the `kallista ps` processes hold.
    pub token_file: Option<std::path::PathBuf>,
}

impl Default for AsyncSettings {
    fn default() -> Self {
        AsyncSettings {
            parameter_servers: 1,
            push_every_steps: 1,
            max_staleness: None,
            hogwild: false,
            divide_lr_by_staleness: false,
            compensate_momentum: true,
            hosts: vec![],
            token_file: None,
        }
    }
}

/// The optimizer the shards run: the job's, without clipping (workers clip
/// whole gradients; a shard sees only its slices). Its Adam `beta_1` is
/// lowered push by push where the rules say ([`MomentumCompensation`]).
pub fn shard_optimizer(config: &OptimizerConfig) -> OptimizerConfig {
    let mut config = config.clone();
    (config.clipnorm, config.global_clipnorm) = (None, None);
    config
}

/// A shard of the job, wherever it runs.
enum Server {
    Local(Shard),
    Remote(Box<RemoteShard>),
}

impl Server {
    fn address(&self) -> &str {
        match self {
            Server::Local(s) => s.address(),
            Server::Remote(s) => s.address(),
        }
    }

    fn stats(&self) -> Result<ShardStats> {
        match self {
            Server::Local(s) => Ok(s.stats()),
            Server::Remote(s) => s.stats(),
        }
    }

    /// Calls `f` with the slices' state (consistent: no push in between).
    fn with_slices<T>(&self, f: impl FnOnce(&[&SliceState]) -> T) -> Result<T> {
        match self {
            Server::Local(s) => Ok(s.with_slices(f)),
            Server::Remote(s) => {
                let states = s.snapshot()?;
                Ok(f(&states.iter().collect::<Vec<_>>()))
            }
        }
    }
}

/// The shards of one job.
pub struct ParameterServers {
    shards: Vec<Server>,
    /// Shard 0's counters at the end of the previous segment.
    before: BTreeMap<usize, WorkerStats>,
}

impl ParameterServers {
    /// Starts the shards on `bind_host`, reached at `advertised_host`, holding
    /// `model`'s trainable weights and optimizer state (a resumed job's included).
    pub fn start(
        model: &Model,
        settings: &AsyncSettings,
        workers: usize,
        job_id: &str,
        secret_bytes: &[u8],
        bind_host: &str,
        advertised_host: &str,
    ) -> Result<ParameterServers> {
        let opt = model.optimizer().ok_or_else(|| EngineError::Invalid("async: the model is not compiled".into()))?;
        let config = shard_optimizer(&opt.config);
        let rules = ShardRules {
            optimizer: config.clone(),
            hogwild: settings.hogwild,
            max_staleness: settings.max_staleness,
            divide_lr_by_staleness: settings.divide_lr_by_staleness,
            momentum: MomentumCompensation::for_job(&config, workers).filter(|_| settings.compensate_momentum),
        };
        let keys = model.weight_keys();
        let secret = Secret::from_bytes(secret_bytes);
        let token = match (&settings.token_file, settings.hosts.is_empty()) {
            (_, true) => None,
            (Some(f), false) => Some(Secret::from_bytes(&read_token(f)?)),
            (None, false) => {
                return Err(EngineError::Invalid("async: kallista ps hosts need the cluster's token file".into()))
            }
        };
        let count = if settings.hosts.is_empty() { settings.parameter_servers } else { settings.hosts.len() };
        let mut shards = vec![];
        for (index, slices) in plan(model, count).into_iter().enumerate() {
            let states = slices
                .into_iter()
                .map(|slice| {
                    let weight = model.weight(&keys[slice.weight]).expect("a planned weight exists");
                    let mut optimizer = Optimizer::new(config.clone());
                    optimizer.iterations = opt.iterations;
                    if let Some(slots) = opt.slots.get(&slice.key) {
                        let mine = slots.iter().map(|s| s[slice.range.clone()].to_vec().into()).collect();
                        optimizer.slots.insert(slice.key.clone(), mine);
                    }
                    let values = weight.data()[slice.range.clone()].to_vec();
                    SliceState { slice, values, optimizer }
                })
                .collect::<Vec<_>>();
            shards.push(match (&token, settings.hosts.get(index)) {
                (Some(token), Some(host)) => {
                    let refs: Vec<&SliceState> = states.iter().collect();
                    let remote = RemoteShard::start(host, token, job_id, index, secret_bytes, rules.clone(), &refs)?;
                    Server::Remote(Box::new(remote))
                }
                _ => Server::Local(Shard::start(
                    bind_host,
                    advertised_host,
                    index,
                    job_id.to_string(),
                    secret.clone(),
                    rules.clone(),
                    states,
                )?),
            });
        }
        Ok(ParameterServers { shards, before: BTreeMap::new() })
    }

    /// Where workers reach the shards, in shard order.
    pub fn addresses(&self) -> Vec<String> {
        self.shards.iter().map(|s| s.address().to_string()).collect()
    }

    pub fn stats(&self) -> Result<Vec<ShardStats>> {
        self.shards.iter().map(Server::stats).collect()
    }

    /// Shard 0's counters per worker (every push goes to every shard).
    fn workers(&self) -> Result<BTreeMap<usize, WorkerStats>> {
        Ok(self.shards.first().map(Server::stats).transpose()?.map(|s| s.workers).unwrap_or_default())
    }

    /// Every shard's values, optimizer slots and iteration count, into `model`.
    pub fn read_into(&self, model: &mut Model) -> Result<()> {
        let mut slots: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
        let mut iterations = 0;
        let sizes: Vec<usize> = model.weight_values_mut().iter().map(|w| w.len()).collect();
        let names = model.optimizer().map_or(0, |o| o.config.kind.slot_names().len());
        {
            let mut values = model.weight_values_mut();
            for shard in &self.shards {
                shard.with_slices(|states| {
                    for s in states {
                        let range = s.slice.range.clone();
                        values[s.slice.weight][range.clone()].copy_from_slice(&s.values);
                        iterations = iterations.max(s.optimizer.iterations);
                        if let Some(mine) = s.optimizer.slots.get(&s.slice.key) {
                            let full = slots
                                .entry(s.slice.key.clone())
                                .or_insert_with(|| vec![vec![0f32; sizes[s.slice.weight]]; names]);
                            for (f, m) in full.iter_mut().zip(mine) {
                                f[range.clone()].copy_from_slice(m);
                            }
                        }
                    }
                })?;
            }
        }
        let opt =
            model.optimizer_mut().ok_or_else(|| EngineError::Invalid("async: the model is not compiled".into()))?;
        opt.iterations = iterations;
        opt.slots.extend(slots.into_iter().map(|(k, v)| (k, v.into_iter().map(Buf::from).collect())));
        Ok(())
    }

    /// Each worker's counters since the previous segment's end (shard 0's:
    /// every push goes to every shard); `max_staleness` stays the job's.
    fn since(&self, now: &BTreeMap<usize, WorkerStats>) -> BTreeMap<usize, WorkerStats> {
        let delta = |worker: &usize, n: &WorkerStats| {
            let b = self.before.get(worker).cloned().unwrap_or_default();
            WorkerStats {
                pulls: n.pulls - b.pulls,
                pushes: n.pushes - b.pushes,
                dropped: n.dropped - b.dropped,
                staleness_sum: n.staleness_sum - b.staleness_sum,
                max_staleness: n.max_staleness,
                rows: n.rows - b.rows,
                loss_sum: n.loss_sum - b.loss_sum,
                correct: n.correct - b.correct,
            }
        };
        now.iter().map(|(w, n)| (*w, delta(w, n))).collect()
    }

    /// The segment's counters so far, summed over its workers (for progress).
    pub fn segment_totals(&self) -> Result<WorkerStats> {
        Ok(sum_workers(&self.since(&self.workers()?)))
    }

    /// Each worker's traffic in the segment, their sum, and the messages the
    /// shards refused so far (one round of stats requests); the next segment
    /// counts from here.
    pub fn end_segment(&mut self) -> Result<SegmentEnd> {
        let stats = self.stats()?;
        let refused = stats.iter().map(|s| s.refused).sum();
        let now = stats.into_iter().next().map(|s| s.workers).unwrap_or_default();
        let counts = self.since(&now);
        let workers = counts
            .iter()
            .map(|(&worker, n)| WorkerLine {
                worker,
                pulls: n.pulls,
                pushes: n.pushes,
                dropped: n.dropped,
                mean_staleness: n.staleness_sum as f64 / n.pushes.max(1) as f64,
                max_staleness: n.max_staleness,
                rows: n.rows,
            })
            .collect();
        self.before = now;
        Ok(SegmentEnd { workers, totals: sum_workers(&counts), refused })
    }
}

/// What [`ParameterServers::end_segment`] reports.
pub struct SegmentEnd {
    pub workers: Vec<WorkerLine>,
    pub totals: WorkerStats,
    pub refused: u64,
}

fn sum_workers(counts: &BTreeMap<usize, WorkerStats>) -> WorkerStats {
    let mut total = WorkerStats::default();
    for n in counts.values() {
        total.pushes += n.pushes;
        total.dropped += n.dropped;
        total.staleness_sum += n.staleness_sum;
        total.rows += n.rows;
        total.loss_sum += n.loss_sum;
        total.correct += n.correct;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::frame::Framed;
    use crate::ps::client::{ParameterClient, Reach};
    use crate::ps::wire::{self, Push, Request, REQUEST};
    use crate::train::segment::weights_hash;
    use crate::train::test_model::{adam, tiny_model};
    use kallista_ops::model::WeightGrads;
    use std::io::Write;
    use std::time::Duration;

    const JOB: &str = "job-1";

    fn grads_of(model: &Model, value: f32) -> WeightGrads {
        let mut values = vec![None; model.weight_keys().len()];
        for (i, _, len) in model.trainable_entries() {
            values[i] = Some((0..len).map(|j| value * (1.0 + (j % 7) as f32)).collect());
        }
        WeightGrads { values, ..Default::default() }
    }

    fn push(worker: usize, step: u64) -> Push {
        Push {
            job: JOB.into(),
            worker,
            segment: 0,
            step,
            steps: 1,
            base_version: 0,
            run: 0,
            rows: 4,
            loss_sum: 1.0,
            correct: 1,
            sparse: vec![],
        }
    }

    fn servers(model: &Model, settings: AsyncSettings) -> (ParameterServers, Secret) {
        let (secret, bytes) = Secret::generate().unwrap();
        (ParameterServers::start(model, &settings, 1, JOB, &bytes, "127.0.0.1", "127.0.0.1").unwrap(), secret)
    }

    fn connect(ps: &ParameterServers, model: &Model, secret: &Secret, worker: usize, reach: Reach) -> ParameterClient {
        let timeout = Duration::from_secs(5);
        ParameterClient::connect_via(&ps.addresses(), model, secret, JOB, worker, timeout, reach).unwrap()
    }

    fn client(ps: &ParameterServers, model: &Model, secret: &Secret, worker: usize) -> ParameterClient {
        let c = connect(ps, model, secret, worker, Reach { direct: true, shared_memory: true });
        assert_eq!(c.direct_shards(), ps.addresses().len(), "shards of this process are called directly");
        c
    }

    /// Sealed values on the connections.
    fn network_client(ps: &ParameterServers, model: &Model, secret: &Secret, worker: usize) -> ParameterClient {
        let c = connect(ps, model, secret, worker, Reach { direct: false, shared_memory: false });
        assert_eq!((c.direct_shards(), c.shared_memory_shards()), (0, 0));
        c
    }

    /// The values through shared memory, the requests on the connections.
    fn shared_memory_client(ps: &ParameterServers, model: &Model, secret: &Secret, worker: usize) -> ParameterClient {
        let c = connect(ps, model, secret, worker, Reach { direct: false, shared_memory: true });
        assert_eq!((c.direct_shards(), c.shared_memory_shards()), (0, ps.addresses().len()));
        c
    }

    fn snapshot(ps: &ParameterServers, like: &Model) -> Model {
        let mut m = like.clone();
        ps.read_into(&mut m).unwrap();
        m
    }

    #[test]
    fn a_push_is_one_optimizer_step_of_the_model_over_the_shards_and_its_answer_is_the_new_weights() {
        // Through connections, through shared memory and by direct calls (the shards run in this process).
        for connect in [network_client, shared_memory_client, client] {
            one_push_is_one_optimizer_step(connect);
        }
    }

    fn one_push_is_one_optimizer_step(connect: fn(&ParameterServers, &Model, &Secret, usize) -> ParameterClient) {
        let model = tiny_model(&adam(&["accuracy"]));
        let settings = AsyncSettings { parameter_servers: 3, ..Default::default() };
        let (ps, secret) = servers(&model, settings);
        let mut worker = model.clone();
        let mut c = connect(&ps, &model, &secret, 0);
        assert_eq!(c.pull(&mut worker, 0).unwrap(), 0);
        assert_eq!(weights_hash(&worker), weights_hash(&model));
        let g = grads_of(&model, 0.01);
        let out = c.push(&mut worker, &g, &push(0, 0)).unwrap();
        assert_eq!(out.accepted, 3);
        // The oracle: the same gradient applied by the model itself (Adam, unsharded).
        let mut expected = model.clone();
        expected.apply_gradients(g).unwrap();
        let after = snapshot(&ps, &model);
        assert_eq!(after.named_weights(), expected.named_weights(), "sharded Adam differs from Adam");
        assert_eq!(after.optimizer().unwrap().slots, expected.optimizer().unwrap().slots);
        assert_eq!(after.optimizer().unwrap().iterations, 1);
        // The worker holds the shards' new values.
        assert_eq!(worker.named_weights(), expected.named_weights());
        assert_eq!(c.pull(&mut worker, 0).unwrap(), 1, "one step of segment 0 pushed");
    }

    #[test]
    fn a_re_run_workers_pull_stops_its_earlier_run_and_every_step_is_applied_once_per_shard() {
        // Through connections, through shared memory and by direct calls.
        for connect in [network_client, shared_memory_client, client] {
            let model = tiny_model(&adam(&["accuracy"]));
            let (ps, secret) = servers(&model, AsyncSettings { parameter_servers: 2, ..Default::default() });
            let (mut old, mut new) = (model.clone(), model.clone());
            let mut earlier = connect(&ps, &model, &secret, 0);
            earlier.pull(&mut old, 0).unwrap();
            earlier.push(&mut old, &grads_of(&model, 0.01), &push(0, 0)).unwrap();
            // Ballista re-runs the worker (the driver resubmitted its round, or
            // its task was retried) while the earlier run still computes.
            let mut rerun = connect(&ps, &model, &secret, 0);
            assert_eq!(rerun.pull(&mut new, 0).unwrap(), 1, "the re-run skips the step pushed");
            let before = snapshot(&ps, &model);
            let e = earlier.push(&mut old, &grads_of(&model, 0.02), &push(0, 2)).unwrap_err().to_string();
            assert!(e.contains("run 2 replaced it"), "{e}");
            assert_eq!(
                snapshot(&ps, &model).named_weights(),
                before.named_weights(),
                "the earlier run changed nothing"
            );
            assert_eq!(rerun.push(&mut new, &grads_of(&model, 0.02), &push(0, 2)).unwrap().accepted, 2);
            assert_eq!(ps.stats().unwrap().iter().map(|s| s.version).collect::<Vec<_>>(), [2, 2]);
        }
    }

    #[test]
    fn a_pull_again_takes_the_weights_others_pushed_and_keeps_the_workers_run() {
        // Through connections, through shared memory and by direct calls.
        for connect in [network_client, shared_memory_client, client] {
            let model = tiny_model(&adam(&["accuracy"]));
            let (ps, secret) = servers(&model, AsyncSettings { parameter_servers: 2, ..Default::default() });
            let (mut a, mut b) = (model.clone(), model.clone());
            let (mut ca, mut cb) = (connect(&ps, &model, &secret, 0), connect(&ps, &model, &secret, 1));
            ca.pull(&mut a, 0).unwrap();
            cb.pull(&mut b, 0).unwrap();
            let pulls_of_0 = || -> u64 { ps.stats().unwrap().iter().map(|s| s.workers[&0].pulls).sum() };
            // Nothing pushed yet: the weights stay those pulled, and no shard
            // sent them again (no pull counted).
            ca.pull_again(&mut a, 0).unwrap();
            assert_eq!(a.named_weights(), model.named_weights());
            assert_eq!(pulls_of_0(), 2, "the first pull only, on each shard");
            // Worker 1 pushes while worker 0 waits for its turn on the cores.
            cb.push(&mut b, &grads_of(&model, 0.01), &push(1, 1)).unwrap();
            ca.pull_again(&mut a, 0).unwrap();
            assert_eq!(a.named_weights(), snapshot(&ps, &model).named_weights(), "the newest weights");
            assert_eq!(pulls_of_0(), 4);
            // Still the same run (its push is applied), and its gradient is
            // on the newest version: not stale.
            let out = ca.push(&mut a, &grads_of(&model, 0.01), &push(0, 2)).unwrap();
            assert_eq!((out.accepted, out.staleness_sum), (2, 0));
            assert_eq!(ps.stats().unwrap().iter().map(|s| s.version).collect::<Vec<_>>(), [2, 2]);
        }
    }

    #[test]
    fn a_step_the_earlier_run_pushed_to_one_shard_after_the_re_runs_count_is_applied_there_once() {
        use crate::ps::local;
        let model = tiny_model(&adam(&["accuracy"]));
        let (ps, secret) = servers(&model, AsyncSettings { parameter_servers: 2, ..Default::default() });
        let shards: Vec<_> = ps.addresses().iter().map(|a| local::find(a, JOB, &secret).unwrap()).collect();
        let plans = crate::ps::slices::plan(&model, 2);
        let lengths: Vec<Vec<usize>> = plans.iter().map(|p| p.iter().map(|s| s.range.len()).collect()).collect();
        let grads: Vec<Vec<Vec<f32>>> = lengths.iter().map(|l| l.iter().map(|&n| vec![0.01; n]).collect()).collect();
        // The values a call answers with go to scratch buffers.
        let scratch = |shard: usize| -> Vec<Vec<f32>> { lengths[shard].iter().map(|&n| vec![0.0; n]).collect() };
        let pull = |shard: usize| {
            let mut values = scratch(shard);
            let mut parts: Vec<&mut [f32]> = values.iter_mut().map(Vec::as_mut_slice).collect();
            shards[shard].pull(0, 0, &mut parts).unwrap()
        };
        let push_to = |shard: usize, run: u64| {
            let g: Vec<&[f32]> = grads[shard].iter().map(Vec::as_slice).collect();
            let mut values = scratch(shard);
            let mut parts: Vec<&mut [f32]> = values.iter_mut().map(Vec::as_mut_slice).collect();
            shards[shard].push(&Push { run, ..push(0, 0) }, &g, &mut parts)
        };
        let (_, _, earlier) = pull(0);
        pull(1);
        // The re-run pulls shard 0 (and reads its count there) first ...
        let (_, done, rerun) = pull(0);
        assert_eq!((done, rerun), (0, earlier + 1));
        // ... then the earlier run's push of step 0 reaches both shards:
        // shard 0 refuses it, shard 1 (not yet pulled by the re-run) applies it.
        assert!(push_to(0, earlier).is_err());
        assert!(push_to(1, earlier).unwrap().0);
        let (_, done, rerun_1) = pull(1);
        assert_eq!(done, 1, "shard 1 holds the step");
        // The re-run pushes step 0 (its count said none was pushed): shard 0
        // applies it, shard 1 answers without applying it a second time.
        assert!(push_to(0, rerun).unwrap().0);
        assert!(!push_to(1, rerun_1).unwrap().0);
        assert_eq!(ps.stats().unwrap().iter().map(|s| s.version).collect::<Vec<_>>(), [1, 1]);
        // A replay of the same run is still refused.
        assert!(push_to(0, rerun).is_err());
    }

    #[test]
    fn a_push_through_shared_memory_reads_only_an_embeddings_touched_rows() {
        let model = tiny_model(&adam(&["accuracy"]));
        let (ps, secret) = servers(&model, AsyncSettings { parameter_servers: 3, ..Default::default() });
        let mut worker = model.clone();
        let mut c = shared_memory_client(&ps, &model, &secret, 0);
        c.pull(&mut worker, 0).unwrap();
        // The region now holds the pulled weights, not zeros: read as the
        // gradient of the untouched rows, they would move those rows.
        let mut g = grads_of(&model, 0.01);
        let (i, key, len) = model.trainable_entries().into_iter().find(|(_, k, _)| k.starts_with("q_embed/")).unwrap();
        let width = model.weight(&key).unwrap().shape()[1];
        let touched = [1u32, 8];
        let embedding = g.values[i].as_mut().unwrap();
        for row in (0..len / width).filter(|r| !touched.contains(&(*r as u32))) {
            embedding[row * width..(row + 1) * width].fill(0.0);
        }
        g.rows = vec![None; g.values.len()];
        g.rows[i] = Some(kallista_ops::autodiff::TouchedRows::new(width, touched.to_vec()));
        assert_eq!(c.push(&mut worker, &g, &push(0, 0)).unwrap().accepted, 3);
        let mut expected = model.clone();
        expected.apply_gradients(g).unwrap();
        assert_eq!(snapshot(&ps, &model).named_weights(), expected.named_weights(), "sharded Adam differs from Adam");
        assert_eq!(worker.named_weights(), expected.named_weights());
    }

    #[test]
    fn shards_of_four_workers_run_adam_with_beta_1_lowered_for_the_staleness_they_measured() {
        use crate::ps::momentum::RunningStaleness;
        let model = tiny_model(&adam(&["accuracy"]));
        let settings = AsyncSettings { parameter_servers: 2, ..Default::default() };
        let (secret, bytes) = Secret::generate().unwrap();
        let ps = ParameterServers::start(&model, &settings, 4, JOB, &bytes, "127.0.0.1", "127.0.0.1").unwrap();
        let mut worker = model.clone();
        let mut c = client(&ps, &model, &secret, 0);
        c.pull(&mut worker, 0).unwrap();
        let (g1, g2) = (grads_of(&model, 0.01), grads_of(&model, -0.03));
        c.push(&mut worker, &g1, &push(0, 0)).unwrap();
        c.push(&mut worker, &g2, &push(0, 1)).unwrap();
        // The oracle: unsharded Adam with beta_1 lowered for a mean staleness
        // that starts at 3 (4 workers) and follows these two fresh pushes.
        let m = MomentumCompensation::for_job(&adam(&["accuracy"]).optimizer, 4).unwrap();
        let first = RunningStaleness::new(3.0).updated(0);
        let means = [first.mean, first.updated(0).mean];
        let mut expected = model.clone();
        for (g, mean) in [(&g1, means[0]), (&g2, means[1])] {
            let beta_1 = m.beta_1_for(mean);
            assert!((0.7..0.9).contains(&beta_1), "{beta_1}");
            crate::ps::momentum::set_beta_1(&mut expected.optimizer_mut().unwrap().config, beta_1);
            expected.apply_gradients(g.clone()).unwrap();
        }
        assert_eq!(snapshot(&ps, &model).named_weights(), expected.named_weights());
        let mut unlowered = model.clone();
        unlowered.apply_gradients(g1.clone()).unwrap();
        unlowered.apply_gradients(g2.clone()).unwrap();
        assert_ne!(snapshot(&ps, &model).named_weights(), unlowered.named_weights(), "beta_1 made no difference");
        // Without compensation, or with one worker, the shards run the job's Adam.
        for (workers, compensate_momentum) in [(4, false), (1, true)] {
            let settings = AsyncSettings { parameter_servers: 2, compensate_momentum, ..Default::default() };
            let ps =
                ParameterServers::start(&model, &settings, workers, JOB, &bytes, "127.0.0.1", "127.0.0.1").unwrap();
            let mut c = client(&ps, &model, &secret, 0);
            let mut worker = model.clone();
            c.pull(&mut worker, 0).unwrap();
            c.push(&mut worker, &g1, &push(0, 0)).unwrap();
            c.push(&mut worker, &g2, &push(0, 1)).unwrap();
            assert_eq!(snapshot(&ps, &model).named_weights(), unlowered.named_weights());
        }
    }

    #[test]
    fn a_gradient_older_than_max_staleness_is_dropped_and_counted() {
        let model = tiny_model(&adam(&["accuracy"]));
        // The late worker through connections, then through shared memory.
        for late_client in [network_client, shared_memory_client] {
            a_gradient_older_than_max_staleness_is_dropped(&model, late_client);
        }
    }

    fn a_gradient_older_than_max_staleness_is_dropped(
        model: &Model,
        late_client: fn(&ParameterServers, &Model, &Secret, usize) -> ParameterClient,
    ) {
        let (mut ps, secret) =
            servers(model, AsyncSettings { parameter_servers: 2, max_staleness: Some(0), ..Default::default() });
        let (mut a, mut b) = (model.clone(), model.clone());
        // One worker through connections, one by direct calls: the same shards, the same versions.
        let (mut ca, mut cb) = (late_client(&ps, model, &secret, 0), client(&ps, model, &secret, 1));
        ca.pull(&mut a, 0).unwrap();
        cb.pull(&mut b, 0).unwrap();
        assert_eq!(cb.push(&mut b, &grads_of(model, 0.01), &push(1, 0)).unwrap().accepted, 2);
        let only_b = snapshot(&ps, model);
        // Worker 0's gradient was computed on version 0; the shards are at version 1.
        let late = ca.push(&mut a, &grads_of(model, -0.02), &push(0, 0)).unwrap();
        assert_eq!((late.accepted, late.staleness_sum), (0, 2));
        assert_eq!(weights_hash(&snapshot(&ps, model)), weights_hash(&only_b));
        assert_eq!(a.named_weights(), only_b.named_weights(), "the late worker was answered the current weights");
        let end = ps.end_segment().unwrap();
        let (lines, refused) = (end.workers, end.refused);
        assert_eq!(refused, 0);
        assert_eq!((lines[0].pushes, lines[0].dropped, lines[0].mean_staleness), (1, 1, 1.0));
        assert_eq!((lines[1].pushes, lines[1].dropped, lines[1].mean_staleness), (1, 0, 0.0));
    }

    #[test]
    fn hogwild_pushes_from_concurrent_workers_are_all_applied() {
        use crate::train::round::CompileSpec;
        let sgd = CompileSpec { optimizer: kallista_ops::optim::OptimizerConfig::sgd(0.1), ..adam(&["accuracy"]) };
        let model = tiny_model(&sgd);
        let settings =
            AsyncSettings { parameter_servers: 2, hogwild: true, divide_lr_by_staleness: false, ..Default::default() };
        let (ps, secret) = servers(&model, settings);
        let grads = [grads_of(&model, 0.01), grads_of(&model, -0.03), grads_of(&model, 0.02)];
        std::thread::scope(|s| {
            for (worker, g) in grads.iter().enumerate() {
                let (ps, model, secret) = (&ps, &model, &secret);
                s.spawn(move || {
                    let mut mine = model.clone();
                    let connect = [client, network_client, shared_memory_client][worker];
                    let mut c = connect(ps, model, secret, worker);
                    c.pull(&mut mine, 0).unwrap();
                    for step in 0..20 {
                        assert_eq!(c.push(&mut mine, g, &push(worker, step)).unwrap().accepted, 2);
                    }
                });
            }
        });
        assert!(ps.stats().unwrap().iter().all(|s| s.version == 60));
        // Plain SGD: whatever the interleaving, every push moved the weights by -lr g.
        let after = snapshot(&ps, &model).named_weights();
        for (i, key, _) in model.trainable_entries() {
            let (w0, w) = (model.weight(&key).unwrap().data(), after[&key].data());
            for (j, (a, b)) in w0.iter().zip(w).enumerate() {
                let moved = -0.1 * 20.0 * grads.iter().map(|g| g.values[i].as_ref().unwrap()[j]).sum::<f32>();
                assert!((b - a - moved).abs() < 1e-4, "{key}[{j}]: {a} -> {b}, expected a move of {moved}");
            }
        }
    }

    #[test]
    fn a_gradient_two_versions_old_moves_the_weights_half_as_far_unless_told_otherwise() {
        use crate::train::round::CompileSpec;
        let sgd = CompileSpec { optimizer: kallista_ops::optim::OptimizerConfig::sgd(0.1), ..adam(&["accuracy"]) };
        let model = tiny_model(&sgd);
        for (divide, factor) in [(true, 0.5f32), (false, 1.0)] {
            let settings = AsyncSettings { parameter_servers: 2, divide_lr_by_staleness: divide, ..Default::default() };
            let (ps, secret) = servers(&model, settings);
            let (mut a, mut b) = (model.clone(), model.clone());
            // The late worker through shared memory.
            let (mut ca, mut cb) = (shared_memory_client(&ps, &model, &secret, 0), client(&ps, &model, &secret, 1));
            ca.pull(&mut a, 0).unwrap();
            cb.pull(&mut b, 0).unwrap();
            for step in 0..2 {
                assert_eq!(cb.push(&mut b, &grads_of(&model, 0.01), &push(1, step)).unwrap().staleness_sum, 0);
            }
            let before = snapshot(&ps, &model).named_weights();
            let g = grads_of(&model, -0.02);
            // Worker 0's gradient was computed on version 0; the shards are at version 2.
            assert_eq!(ca.push(&mut a, &g, &push(0, 0)).unwrap().staleness_sum, 4, "2 versions old on 2 shards");
            let after = snapshot(&ps, &model).named_weights();
            for (i, key, _) in model.trainable_entries() {
                for (j, (w0, w)) in before[&key].data().iter().zip(after[&key].data()).enumerate() {
                    let moved = -0.1 * factor * g.values[i].as_ref().unwrap()[j];
                    assert!((w - w0 - moved).abs() < 1e-6, "{key}[{j}] divide {divide}: {w0} -> {w}, expected {moved}");
                }
            }
        }
    }

    /// A push request and its values as sent with `key`, byte `flip` changed when given.
    fn push_bytes(
        model: &Model,
        plan_of_shard: &[crate::ps::slices::Slice],
        key: &[u8],
        flip: Option<usize>,
    ) -> Vec<u8> {
        let mut framed = Framed::new(std::io::Cursor::new(vec![]), Secret::from_bytes(key));
        wire::send_json(&mut framed, REQUEST, &Request::Push(push(0, 5))).unwrap();
        let g = grads_of(model, 1.0);
        let parts: Vec<&[f32]> =
            plan_of_shard.iter().map(|s| &g.values[s.weight].as_deref().unwrap()[s.range.clone()]).collect();
        wire::send_values(&mut framed, &parts).unwrap();
        let mut bytes = framed.stream.into_inner();
        if let Some(at) = flip {
            bytes[at] ^= 1;
        }
        bytes
    }

    #[test]
    fn an_unauthenticated_and_a_tampered_push_are_refused_logged_and_change_nothing() {
        let model = tiny_model(&adam(&["accuracy"]));
        let (_, secret_bytes) = Secret::generate().unwrap();
        let settings = AsyncSettings { parameter_servers: 1, ..Default::default() };
        let ps = ParameterServers::start(&model, &settings, 1, JOB, &secret_bytes, "127.0.0.1", "127.0.0.1").unwrap();
        let before = weights_hash(&snapshot(&ps, &model));
        let shard_plan = &crate::ps::slices::plan(&model, 1)[0];
        let send = |bytes: Vec<u8>| {
            let mut s = std::net::TcpStream::connect(&ps.addresses()[0]).unwrap();
            s.write_all(&bytes).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            // The shard closes the connection after refusing, or after answering and seeing ours closed.
            let _ = std::io::Read::read_to_end(&mut s, &mut vec![]);
        };
        send(push_bytes(&model, shard_plan, b"a guessed secret", None));
        let genuine = push_bytes(&model, shard_plan, &secret_bytes, None);
        // A byte of the last values chunk (sealed) changed on the way.
        send(push_bytes(&model, shard_plan, &secret_bytes, Some(genuine.len() - 40)));
        // Signed, but its values said to be in shared memory on a connection that shared none.
        let mut framed = Framed::new(std::io::Cursor::new(vec![]), Secret::from_bytes(&secret_bytes));
        wire::send_json(&mut framed, REQUEST, &Request::PushShared(push(0, 5))).unwrap();
        send(framed.stream.into_inner());
        let Server::Local(shard) = &ps.shards[0] else { panic!("a shard in the driver") };
        let refusals = shard.refusals();
        assert_eq!(refusals.len(), 3, "{refusals:?}");
        assert!(refusals[2].contains("no region was shared"), "{refusals:?}");
        assert!(refusals.iter().all(|r| r.contains("refused a message from 127.0.0.1")), "{refusals:?}");
        assert!(refusals[0].contains("authentication"), "{refusals:?}");
        assert_eq!(ps.stats().unwrap()[0].version, 0);
        assert_eq!(weights_hash(&snapshot(&ps, &model)), before, "a refused push changed the weights");
        // The same push, untouched, is applied: the checks above could fail.
        send(genuine);
        assert_eq!(ps.stats().unwrap()[0].version, 1);
        assert_ne!(weights_hash(&snapshot(&ps, &model)), before);
    }

    #[test]
    fn only_a_worker_of_the_job_with_its_secret_calls_a_shard_of_its_process_directly() {
        use crate::ps::local;
        let model = tiny_model(&adam(&["accuracy"]));
        let (ps, secret) = servers(&model, AsyncSettings { parameter_servers: 1, ..Default::default() });
        let address = ps.addresses()[0].clone();
        let (other, _) = Secret::generate().unwrap();
        assert!(local::find(&address, JOB, &secret).is_some());
        assert!(local::find(&address, JOB, &other).is_none(), "another secret");
        assert!(local::find(&address, "another job", &secret).is_none(), "another job");
        // A worker with another secret goes through a connection, where its
        // first request is refused (the offer of shared memory, or a pull).
        for shared_memory in [false, true] {
            let (addresses, timeout) = (std::slice::from_ref(&address), Duration::from_secs(5));
            let reach = Reach { direct: true, shared_memory };
            let e = ParameterClient::connect_via(addresses, &model, &other, JOB, 0, timeout, reach)
                .and_then(|mut c| {
                    assert_eq!(c.direct_shards(), 0);
                    c.pull(&mut model.clone(), 0)
                })
                .expect_err("refused")
                .to_string();
            assert!(e.contains(&format!("parameter server shard 0 at {address}")), "{e}");
        }
        drop(ps);
        assert!(local::find(&address, JOB, &secret).is_none(), "a stopped shard");
    }

    #[test]
    fn a_worker_that_cannot_reach_a_shard_fails_naming_its_address() {
        let model = tiny_model(&adam(&["accuracy"]));
        let (secret, _) = Secret::generate().unwrap();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let e =
            ParameterClient::connect(std::slice::from_ref(&closed), &model, &secret, JOB, 0, Duration::from_secs(1))
                .err()
                .expect("no shard listens there")
                .to_string();
        assert!(e.contains(&format!("parameter server shard 0 at {closed}")), "{e}");
    }
}
