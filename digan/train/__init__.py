"""Training: DiffAugment (`augment`) and the trainer.  Nothing is imported here, so that
`import digan.train.augment` stays cheap and has no side effects."""
