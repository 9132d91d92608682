"""sorap2p.learn: the federated-learning engine (torch, no I/O).

Layering: imports only `sorap2p.core`, torch, numpy, scipy and scikit-learn. Nothing here
touches files (except a user's own loader), sockets or clocks; randomness comes from seeds or
a `torch.Generator` passed in.

Public API (import from the submodules):

Weights (`sorap2p.learn.weights`)
    ``ParamSpec.from_module(m) / .from_state_dict(sd) / .from_description(desc)``;
    ``spec.flatten(sd, out=None) -> float32 vector``; ``spec.unflatten(vec) -> state_dict``
    (float32 entries are views); ``spec.load_into(m, vec)``, ``spec.read_from(m)``,
    ``spec.describe()``, ``spec.size``.
Models (`sorap2p.learn.models`)
    ``build_model(ref, *, seed=0, **kw)``: ``ref`` is "digits_cnn" | "digits_mlp" |
    "mnist1d_cnn" | "pkg.module:factory".
Data (`sorap2p.learn.data`)
    ``load_dataset(ref) -> DatasetSplits(train, test, num_classes)`` for "digits" |
    "mnist1d" (optional package) | "pkg.module:loader"; ``holdout_split(ds, fraction, gen)``;
    ``dirichlet_partition(labels, n, alpha, gen)``; ``trainer_shard(ds, i, n, alpha, seed)``;
    ``root_split(ds, size, gen, balanced=False) -> (rest, root)`` (FLTrust's root dataset).
Training (`sorap2p.learn.train`)
    ``TrainConfig(epochs, batch_size, lr, momentum, weight_decay, prox_mu, num_threads)``;
    ``local_train(model, spec, global_vec, data, cfg, gen) -> LocalResult(delta, num_samples,
    train_loss)``; ``evaluate(model, data, vector=, spec=) -> EvalResult(loss, accuracy, n)``.
Aggregation (`sorap2p.learn.strategies`)
    ``allocate_rows(n, d)`` (aligned rows to decrypt updates into, in key order);
    ``UpdateBatch.create(deltas (n, d) float32, weights, keys)``; strategies FedAvg,
    FedProx(mu), Median, TrimmedMean(beta), Krum(f), MultiKrum(f, m),
    RobustMultiKrum(fraction, min_norm) ("robust_multi_krum": the robust rule without a root
    set; also drops free riders' empty updates), FLTrust(min_norm, median_norm) ("fltrust",
    the paper's rule), RobustFLTrust(min_norm, margin, clip, reference_weight, weighted,
    reference_epochs) ("robust_fltrust": the robust rule with a root set),
    NormClipped(inner, max_norm);
    ``needs_reference(strategy)``: FLTrust rules read ``batch.reference``, the server's delta
    on the root dataset (``UpdateBatch.create(..., reference=)``); the node layer supplies it
    (see `FLTrust`), trained for ``reference_epochs(strategy, round_epochs)`` local epochs;
    ``make_strategy(name, params) -> Strategy`` with ``strategy.aggregate(batch) ->
    AggregateResult(delta, selected, scores)`` and ``strategy.params()``; ``StreamingMean``;
    ``apply_delta(global_vec, delta, server_lr)``. Determinism and precision: see the module.
Scoring (`sorap2p.learn.scoring`)
    ``score_contributions(batch, strategy, global_vec, evaluator) -> ContributionReport``
    (``.ranking`` best first, ``.scores()`` by key).
Compression and privacy (`sorap2p.learn.compress`, `sorap2p.learn.privacy`)
    ``to_fp16/from_fp16``, ``quantize_int8/dequantize_int8``, ``ErrorFeedback``;
    ``DPConfig(clip_norm, noise_multiplier)``, ``privatize(delta, cfg, gen)``,
    ``epsilon(q, noise_multiplier, steps, delta) -> (eps, order)``.
Simulation (`sorap2p.learn.simulate`, `sorap2p.learn.attacks`)
    ``prepare(FederationConfig) -> Federation``, ``run_rounds(fed, strategy, rounds,
    transform=)``, ``round_updates``, ``root_update(fed, round)`` (``root_size > 0``),
    ``centralized_baseline``; ``WithoutTrainers(strategy, trainers)`` (the perfect filter,
    for experiments), ``trainer_key(i)``; Byzantine behaviours
    SignFlip, Scaling, GaussianNoise, FreeRider.
"""
