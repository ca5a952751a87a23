"""The public API, pinned: every public module's ``__all__``, name by name.

A public module is any module of ``bestckpt`` with no path segment starting with ``_``. Each must
declare ``__all__``, every name in it must exist, and the set must equal the table below. Changing
the public API therefore means changing this table on purpose, in the same commit, where a reviewer
sees it. The table is generated from the source: ``PYTHONPATH=src python scripts/public_api.py --write``
rewrites it in place (without ``--write`` it prints it).
"""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import bestckpt

# BEGIN GENERATED TABLE (scripts/public_api.py --write)
EXPECTED: dict[str, list[str]] = {
    "bestckpt": ["BestCheckpointTracker", "BestckptError", "BestckptWarning", "Record", "TrackerConfig", "__version__"],
    "bestckpt.backbones": [
        "Backbone", "BackboneError", "BackboneFactory", "ClipLike", "DEFAULT_BACKBONES", "InceptionLike",
        "KINDS", "LpipsLike", "available_backbones", "clear_backbone_cache", "get_backbone", "register_backbone",
    ],
    "bestckpt.backbones.clip": [
        "CONTEXT_LENGTH", "HFClipBackbone", "OpenClipBackbone", "clip_vit_b_32", "clip_vit_l_14",
        "hf_clip_factory",
    ],
    "bestckpt.backbones.images": ["QUANTISE_HINT", "check_uint8_images"],
    "bestckpt.backbones.inception": [
        "FIDInceptionV3", "INPUT_SIZE", "InceptionBackbone", "resize_bilinear_tf1", "standard_factory",
    ],
    "bestckpt.backbones.lpips": [
        "LPIPS_NETS", "LpipsBackbone", "build_features", "find_lin_weights", "lpips_alex", "lpips_vgg",
    ],
    "bestckpt.backbones.protocols": ["Backbone", "BackboneFactory", "ClipLike", "InceptionLike", "LpipsLike"],
    "bestckpt.backbones.weights": [
        "ALEXNET", "CLIP_VIT_B_32", "CLIP_VIT_L_14", "INCEPTION_FID", "KNOWN_WEIGHTS", "VGG16", "WeightSpec",
        "WeightsError", "read_state_dict", "resolve_weights", "search_dirs", "torch_hub_checkpoints_dir",
        "verify_weights",
    ],
    "bestckpt.cli": ["COMMANDS", "build_parser", "fail", "main", "setup_logging"],
    "bestckpt.cli.demo": ["add_parser", "run"],
    "bestckpt.cli.distributed": [
        "GLOO_WORKER_THREAD", "RanksLost", "add_distributed_options", "broadcast", "gloo_threads", "in_turn",
        "is_main", "launched", "run_command", "world_size",
    ],
    "bestckpt.cli.evaluate": [
        "add_evaluation_options", "add_parser", "build_evaluator", "check_settings", "evaluate_all",
        "evaluator_class", "missing_metrics_extra", "open_tracker", "plan", "prepare", "run",
    ],
    "bestckpt.cli.export": ["add_parser", "run"],
    "bestckpt.cli.finalize": ["add_parser", "run"],
    "bestckpt.cli.lockstep": ["LockstepEvaluator"],
    "bestckpt.cli.prune": ["add_config_options", "add_parser", "config_overrides", "run"],
    "bestckpt.cli.release": ["add_parser", "run"],
    "bestckpt.cli.report": ["add_parser", "run"],
    "bestckpt.cli.status": ["add_parser", "collect", "run"],
    "bestckpt.cli.watch": ["add_parser", "run"],
    "bestckpt.demo": [],
    "bestckpt.demo.accuracy": [
        "ALL", "accuracy", "attribute_targets", "checkpoint_accuracy", "classifier_attributes", "exact_renders",
        "format_accuracy", "nearest_render_attributes", "prompt_accuracy", "spearman",
    ],
    "bestckpt.demo.data": [
        "ATTRIBUTES", "ATTRIBUTE_NAMES", "BACKGROUND_RGB", "COLOR_RGB", "HELDOUT_FRACTION", "IMAGE_SIZE",
        "Jitter", "Sample", "ShapesDataset", "Tokenizer", "attrs_to_indices", "caption", "combinations",
        "eval_prompts", "indices_to_attrs", "is_heldout", "parse_caption", "random_attributes", "random_jitter",
        "reference_images", "render",
    ],
    "bestckpt.demo.evaluators": [
        "DEFAULT_WEIGHTS_DIR", "DEMO_BACKBONES", "DemoClassifier", "DemoClassifierNet", "DemoClip",
        "DemoClipNet", "DemoLpips", "DemoWeightsError", "ImageTrunk", "WEIGHT_FILES", "build_demo_backbone",
        "demo_classifier", "demo_clip", "demo_lpips", "load_weights_file", "preprocess", "verify_weights",
        "write_manifest",
    ],
    "bestckpt.demo.model": ["DiTConfig", "TextEncoder", "TinyDiT", "timestep_embedding"],
    "bestckpt.demo.recipe": ["add_arguments", "available_cores", "default_threads", "resolve_defaults"],
    "bestckpt.demo.sampler": ["DemoSampler", "euler_sample", "initial_noise", "load_model", "make_sampler", "to_uint8"],
    "bestckpt.demo.tag_sampler": ["TagSampler", "config_from_args", "load_tag_model", "make_sampler"],
    "bestckpt.demo.train": [
        "DEMO_BACKBONES", "DEMO_COMPOSITE_MAPPINGS", "SAMPLER_SPEC", "TrainObserver", "TrainResult",
        "add_arguments", "best_accuracy", "build_protocol", "default_threads", "find_resume_checkpoint",
        "flow_matching_loss", "learning_rate", "load_resume_checkpoint", "main", "resolve_defaults",
        "save_checkpoint", "start_evaluation", "update_ema",
    ],
    "bestckpt.errors": [
        "BackboneError", "BestckptError", "BestckptWarning", "CompositeUnavailableError", "ConfigError",
        "DemoWeightsError", "MetricError", "NumericalError", "ProtocolChangedError", "ProtocolError",
        "ReportError", "SamplerError", "SamplerOutputError", "SmallSampleWarning", "StateError",
        "StateLockTimeout", "UnsafeFileError", "UnsafePathError", "WeightsError",
    ],
    "bestckpt.evaluation": [],
    "bestckpt.evaluation.composite": [
        "composite_definition", "composite_shares", "protocol_composite_config", "recompute_composite",
    ],
    "bestckpt.evaluation.contracts": ["ScorerLike"],
    "bestckpt.evaluation.distributed": [
        "DistContext", "agree_on_errors", "all_gather_padded", "broadcast_object", "current_context",
        "gather_objects", "shard_range",
    ],
    "bestckpt.evaluation.evaluate": [
        "EvaluationResult", "evaluate_checkpoint", "load_reference_set", "paired_references",
        "prepare_reference_statistics",
    ],
    "bestckpt.evaluation.prompts": ["CSV_IMAGE_COLUMN", "CSV_PROMPT_COLUMN", "load_prompt_file"],
    "bestckpt.evaluation.protocol": [
        "DEFAULT_BACKBONES", "DEFAULT_METRICS", "DEFAULT_NUM_SAMPLES", "IMAGE_SUFFIXES", "Protocol",
        "ProtocolError", "SmallSampleWarning", "derive_seed", "load_prompt_file",
    ],
    "bestckpt.evaluation.sampler": [
        "SampleBatch", "Sampler", "SamplerError", "SamplerOutputError", "SamplerSettings", "WEIGHT_KINDS",
        "load_factory", "load_sampler", "validate_sample_batch",
    ],
    "bestckpt.evaluation.samples": [
        "GRID_NAME", "load_image_uint8", "resize_uint8", "step_dir", "write_evaluation_samples",
        "write_progress_grid",
    ],
    "bestckpt.evaluation.scorer": [
        "CompositeConfig", "DEFAULT_METRICS", "MetricFailure", "ReferenceSet", "Scorer", "Scores",
    ],
    "bestckpt.fsio": [
        "TEMP_FILE_PREFIX", "TEMP_PREFIX", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
        "atomic_writer", "check_regular", "describe_kind", "float_from_json", "fsync_dir", "indented_array",
        "indented_object", "open_append", "read_regular", "read_regular_stat", "sha256_bytes", "sha256_file",
        "temp_name", "to_strict_json", "unlink_quiet",
    ],
    "bestckpt.integrations": [],
    "bestckpt.integrations.accelerate": [
        "AccelerateCheckpoints", "CHECKPOINT_TEMPLATE", "check_total_limits", "load_unet",
    ],
    "bestckpt.integrations.deepspeed": [
        "MODEL_STATES", "is_tag_complete", "load_model_states", "mark_complete", "read_latest_tag",
        "save_checkpoint", "tag_name",
    ],
    "bestckpt.integrations.hunyuandit": [
        "EPOCH_TAG", "TagRegistrar", "UNTOUCHED_TAGS", "ZERO3_MODEL_STATES", "active", "close",
        "consolidate_zero3", "is_zero3", "load_tag_weights", "model_states_file", "read_client_state", "start",
        "tag_kind", "tags_saved",
    ],
    "bestckpt.integrations.hunyuandit_sampler": [
        "End2EndSampler", "INSTALL_HINT", "import_end2end", "make_sampler", "predict_kwargs", "to_uint8_images",
    ],
    "bestckpt.integrations.lightning": ["BestCheckpointCallback", "DEFAULT_TEMPLATE", "load_lightning_state_dict"],
    "bestckpt.integrations.loop": ["EvaluationOutcome", "MODES", "TrainingEvaluation", "best_when_recorded"],
    "bestckpt.integrations.transformers": [
        "BestCheckpointCallback", "CHECKPOINT_TEMPLATE", "check_training_arguments", "load_state_dict",
        "resume_step", "zero3_weights_missing",
    ],
    "bestckpt.metrics": [
        "CLIP_CONVENTIONS", "CompositeUnavailableError", "DEFAULT_LEVEL", "DEFAULT_METRICS",
        "DEFAULT_RESAMPLES", "DEFAULT_WEIGHTS", "FEATURE_CLIP_IMAGE", "FEATURE_CLIP_TEXT",
        "FEATURE_INCEPTION_LOGITS", "FEATURE_INCEPTION_POOL", "FEATURE_LPIPS", "InverseMap", "LinearMap",
        "LogisticMap", "METRICS", "MetricError", "MetricSpec", "NumericalError", "REFERENCE_FID_STATISTICS",
        "REFERENCE_INCEPTION_POOL", "RatioMap", "ReciprocalComplementMap", "ReferenceStatistics", "ScoreMap",
        "check_composite_weights", "clip_cosines", "clip_score", "composite_defaults", "composite_score",
        "default_mappings", "fid_from_features", "fid_from_statistics", "inception_score_from_logits",
        "kid_from_features", "lpips_from_features", "metric_intervals", "register_metric", "unregister_metric",
    ],
    "bestckpt.metrics.bootstrap": ["RESAMPLED_METRICS", "metric_intervals", "metric_replicates"],
    "bestckpt.metrics.clip_score": ["CLIP_CONVENTIONS", "clip_cosines", "clip_score"],
    "bestckpt.metrics.composite": [
        "DEFAULT_WEIGHTS", "InverseMap", "LinearMap", "LogisticMap", "RatioMap", "ReciprocalComplementMap",
        "ScoreMap", "check_composite_weights", "composite_contributions", "composite_score", "default_mappings",
        "mapping_from_dict", "mapping_to_dict",
    ],
    "bestckpt.metrics.fid": ["ReferenceStatistics", "fid_from_features", "fid_from_statistics", "warn_if_small_sample"],
    "bestckpt.metrics.inception_score": ["MIN_SAMPLES_PER_SPLIT", "inception_score_from_logits"],
    "bestckpt.metrics.intervals": [
        "DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "composite_replicates", "fid_influence", "fid_replicates",
        "inception_score_replicates", "kid_influence", "kid_replicates", "mean_replicates",
        "percentile_interval", "resample_counts",
    ],
    "bestckpt.metrics.kid": ["kid_from_features", "mmd2_unbiased", "polynomial_kernel"],
    "bestckpt.metrics.lpips": ["lpips_from_features", "normalize_channels"],
    "bestckpt.metrics.registry": [
        "DEFAULT_METRICS", "FEATURE_CLIP_IMAGE", "FEATURE_CLIP_TEXT", "FEATURE_INCEPTION_LOGITS",
        "FEATURE_INCEPTION_POOL", "FEATURE_LPIPS", "METRICS", "MetricSpec", "REFERENCE_FID_STATISTICS",
        "REFERENCE_INCEPTION_POOL", "composite_defaults", "register_metric", "unregister_metric",
    ],
    "bestckpt.runners": [
        "BackgroundRunner", "EvalSchedule", "Evaluator", "InlineRunner", "ON_PROTOCOL_CHANGE",
        "ProtocolChangedError", "SidecarWatcher", "build_scorer", "default_device", "reconcile_protocol",
    ],
    "bestckpt.runners.background": ["BackgroundRunner"],
    "bestckpt.runners.evaluator": ["Evaluator", "build_scorer", "default_device"],
    "bestckpt.runners.finalize": [
        "DECISION_FILE", "FinalDecision", "decide", "derive_protocol", "finalize", "read_decision",
        "select_finalists",
    ],
    "bestckpt.runners.inline": ["InlineRunner"],
    "bestckpt.runners.protocol_change": ["ON_PROTOCOL_CHANGE", "ProtocolChangedError", "reconcile_protocol"],
    "bestckpt.runners.records": ["record_of", "record_path", "status_of"],
    "bestckpt.runners.schedule": ["EvalSchedule"],
    "bestckpt.runners.sidecar": ["SidecarWatcher"],
    "bestckpt.runners.worker": ["background_main"],
    "bestckpt.sinks": [],
    "bestckpt.sinks.base": [
        "EXTRAS", "EvaluationEvent", "GuardedSink", "REGISTRY", "Sink", "SinkSpec", "evaluation_images",
        "make_sinks",
    ],
    "bestckpt.sinks.export": ["ExportResult", "export_run", "recorded_events"],
    "bestckpt.sinks.mlflow": ["MlflowSink", "metric_key"],
    "bestckpt.sinks.options": ["add_sink_options", "sink_spec"],
    "bestckpt.sinks.report": ["ReportError", "find_checkpoint_dir", "render_report", "write_report"],
    "bestckpt.sinks.report.data": [
        "METRIC_ORDER", "RunData", "find_checkpoint_dir", "interval_of", "load_run", "reference_paths",
    ],
    "bestckpt.sinks.report.learned": ["ACCURACY_FILE", "accuracy", "composite_shares"],
    "bestckpt.sinks.report.sections": ["best_samples", "checkpoints", "header", "metric_curves", "progress_grid"],
    "bestckpt.sinks.report.svg": ["Point", "fmt", "svg_plot", "svg_timeline"],
    "bestckpt.sinks.tensorboard": ["TAGS", "TensorBoardSink"],
    "bestckpt.sinks.wandb": [
        "BEST_KEY", "COMPARISONS_KEY", "GRID_KEY", "STEP_METRIC", "WandbSink", "evaluation_row",
        "linked_settings",
    ],
    "bestckpt.testing": [],
    "bestckpt.testing.networks": [
        "TensorFeatureCLIP", "clip_tiny_random_test", "clip_vit_b_32_random_test", "inception_random_test",
        "init_random_", "lpips_alex_random_test", "lpips_vgg_random_test", "random_fid_inception",
        "random_lpips_parts", "random_open_clip", "spec_for_file", "write_random_hf_clip",
        "write_random_inception_weights", "write_random_lpips_weights", "write_tiny_hf_clip",
    ],
    "bestckpt.tracking": [],
    "bestckpt.tracking.aliasing": ["check_new_path", "kept_owner", "overlap", "symlinked"],
    "bestckpt.tracking.attached": ["RESULTS", "annotate", "result_scalars", "results_of"],
    "bestckpt.tracking.bestlink": ["atomic_symlink", "read_pointer", "remove_link"],
    "bestckpt.tracking.commit": [
        "check_present", "commit", "decide", "point_best_link", "protected_steps", "write_state",
    ],
    "bestckpt.tracking.config": ["DEFAULT_FILENAME_TEMPLATE", "TrackerConfig", "default_of"],
    "bestckpt.tracking.console": ["SUMMARY_RULE", "SUMMARY_TITLE", "format_metrics", "format_score", "format_summary"],
    "bestckpt.tracking.entries": [
        "UnsafePathError", "cleanup_temporaries", "confine", "delete_entry", "entry_stat", "move_aside",
    ],
    "bestckpt.tracking.finalized": [
        "FINAL", "LOCK_NAME", "abandon", "carried", "choice_time", "final_of", "protected", "running_lock",
        "set_final",
    ],
    "bestckpt.tracking.guide_api": ["CLEANUP_DEPRECATION", "GuideAPI"],
    "bestckpt.tracking.journal": ["StateFile", "read_state"],
    "bestckpt.tracking.layout": [
        "BEST_LINK", "COMPLETE_MARKER", "JOURNAL_FILE", "LATEST_FILE", "LOCK_FILE", "OWN_NAMES",
        "POINTER_MAX_BYTES", "POINTER_SUFFIX", "RESULTS_FILE", "STATE_FILE", "STATE_MAX_BYTES", "check_not_own",
        "checkpoint_relpath", "find_checkpoints", "is_checkpoint_complete", "legacy_relpath", "mark_complete",
        "marker_step", "own_file", "read_latest_tag", "read_pointer_file", "real_relpath", "step_entries",
        "warn_once",
    ],
    "bestckpt.tracking.locking": ["DirectoryLock", "StateLockTimeout", "lock"],
    "bestckpt.tracking.pending": ["check_releasable", "format_age", "is_stale", "pending_age", "release", "warn_stale"],
    "bestckpt.tracking.policies": [
        "AnyOf", "Candidate", "Decision", "EveryNSteps", "LatestN", "PendingEvaluation", "Pinned", "Policy",
        "TopK", "interval_from_info", "noise_margin", "rank", "retention_policy", "select_best",
    ],
    "bestckpt.tracking.ranking": ["Ranking"],
    "bestckpt.tracking.reconcile": [
        "adopt_unregistered", "check_metric_change", "drop_missing", "finish_intents", "load",
        "rebuild_from_disk", "reconcile", "scan", "unknown_entries",
    ],
    "bestckpt.tracking.rescoring": ["RESCORING", "failed_again", "had_valid_score", "pending_again"],
    "bestckpt.tracking.results": ["RESULTS_SCHEMA", "ResultsFile", "results_document", "summary_of"],
    "bestckpt.tracking.roles": ["default_is_writer"],
    "bestckpt.tracking.saveorder": [
        "fields", "file_id", "order", "order_resaves", "restamp_if_copied", "same_checkpoint",
    ],
    "bestckpt.tracking.settings": [
        "Change", "DELETION_SETTINGS", "NOT_PASSED", "adopt", "cli_option", "differences", "not_stored",
        "resolve", "stored_settings",
    ],
    "bestckpt.tracking.startup": ["prepare_directory", "repair_best_link", "start"],
    "bestckpt.tracking.state": [
        "HEADER_TOP", "Record", "STATE_SCHEMA", "STATUSES", "StateError", "TrackerState", "check_step",
        "clean_metrics",
    ],
    "bestckpt.tracking.tracker": ["BestCheckpointTracker", "Record", "STATE_SCHEMA", "StateError"],
    "bestckpt.tracking.values": [
        "check_epoch", "check_info", "check_step", "check_text", "clean_metrics", "metric_value",
    ],
}
# END GENERATED TABLE


def public_modules() -> dict[str, ModuleType]:
    """Every public module of bestckpt, imported, by dotted name."""
    names = ["bestckpt"] + [m.name for m in pkgutil.walk_packages(bestckpt.__path__, "bestckpt.")]
    public = [n for n in names if not any(part.startswith("_") for part in n.split("."))]
    return {n: importlib.import_module(n) for n in sorted(public)}


def current_api() -> dict[str, list[str]]:
    """Module -> sorted ``__all__`` (modules without ``__all__`` are left out; the test names them)."""
    return {name: sorted(mod.__all__) for name, mod in public_modules().items() if hasattr(mod, "__all__")}


def test_public_api_is_declared_and_pinned() -> None:
    modules = public_modules()
    undeclared = sorted(name for name, mod in modules.items() if not hasattr(mod, "__all__"))
    assert undeclared == [], f"declare __all__ in: {undeclared}"
    dangling = {name: [n for n in mod.__all__ if not hasattr(mod, n)] for name, mod in modules.items()}
    assert {k: v for k, v in dangling.items() if v} == {}, "names in __all__ that the module does not define"
    duplicated = sorted(name for name, mod in modules.items() if len(set(mod.__all__)) != len(mod.__all__))
    assert duplicated == [], f"__all__ lists a name twice in: {duplicated}"
    current = current_api()
    changes = {
        module: {"added": sorted(set(current.get(module, ())) - set(EXPECTED.get(module, ()))),
                 "removed": sorted(set(EXPECTED.get(module, ())) - set(current.get(module, ()))),
                 "module": "new" if module not in EXPECTED else ("gone" if module not in current else "kept")}
        for module in sorted(current.keys() | EXPECTED.keys()) if current.get(module) != EXPECTED.get(module)
    }
    assert changes == {}, (
        "the public API changed; if on purpose, run `PYTHONPATH=src python scripts/public_api.py --write`"
    )


def test_the_package_exports_the_tracker_api() -> None:
    assert {"BestCheckpointTracker", "TrackerConfig", "Record", "BestckptError"} <= set(bestckpt.__all__)
    assert set(bestckpt.__all__) == set(bestckpt._EXPORTS) | {"__version__"}  # each lazy name is resolvable
