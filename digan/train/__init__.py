"""Training: DiffAugment (`augment`) and the trainer.  Nothing is imported here, so that
`import digan.train.augment` stays cheap and has no side effects.

Layout: `augment` (DiffAugment), `loss` (DIGAN's losses), `loop` (TrainConfig, the sampler, Trainer),
`signals` (SIGINT/SIGTERM stop after the step, the test kill point), `snapshots` (snapshot names),
`reports` (console line, log.csv, stats.jsonl, metrics.jsonl, TensorBoard), `cli` (`digan train`).
The snapshot's optimizer/RNG/step state is digan.checkpoint.training_state; torchrun set-up is
digan.distributed."""
