//! The error type of mappo-eval.

/// Errors of evaluating, calibrating and routing with a checkpoint: the reasons training fails
/// too (a checkpoint that cannot be used, a corpus that cannot be read or embedded, a tensor
/// operation, pieces that do not fit together — an outcome corpus without outcomes, a budget
/// that cannot be met, an unknown agent), so it is mappo-train's one error type.
pub type EvalError = mappo_train::TrainError;
