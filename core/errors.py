"""The one exception type that reaches a user as a single clear line instead of a traceback."""


class InputError(Exception):
    """Bad input from the user (file, column, value or config); the message names what is wrong."""


class TrainingDiverged(InputError):
    """Losses or predictions stopped being finite: a setting (usually the learning rate) must change."""

    @classmethod
    def of(cls, what: str) -> "TrainingDiverged":
        return cls(f"training diverged: {what}; lower train.lr or choose another train.optimizer")
