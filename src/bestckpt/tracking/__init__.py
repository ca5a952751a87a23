"""The tracker core: torch-free bookkeeping of one checkpoint directory.

Who does what (each module imports only those listed after it, and nothing here imports torch)::

    tracker     BestCheckpointTracker: lock -> reload -> mutate -> commit -> results
    roles       which process writes (global rank 0)
    startup     the writer's start: create the directory, clean leftovers, compact, repair best.pt
    commit      one transaction's commit: retention -> state -> best.pt -> deletions
    pending     pending checkpoints whose evaluation never comes: age, staleness, explicit release
    reconcile   the state vs the directory: reloads, vanished checkpoints, interrupted deletions,
                adoption of checkpoints written but never registered
    ranking     incremental ranking of the live records (same order as the policies)
    saveorder   the save order (Record.seq): "latest" is the most recent save, not the highest step
    state       Record, the schema, the in-memory state and its encoding
    policies    pure retention policies (TopK, LatestN, EveryNSteps, Pinned, PendingEvaluation)
    config      TrackerConfig: one typed, validated source of settings for the API and the CLI
    console     the guide's summary block and score formatting (text only)
    results     the guide's best_checkpoint_results.json: its document and its writer
    journal     the state file's bytes: snapshot + append-only journal
    bestlink    best.pt: atomic relative symlink swap (pointer-file fallback)
    locking     the directory's cross-process lock
    layout      our file names, the one scan for step checkpoints and their completeness, relative paths
    entries     confinement to the directory, the only deletion, leftovers of interrupted writes
"""

__all__: list[str] = []  # import the submodules; the package itself exports nothing
