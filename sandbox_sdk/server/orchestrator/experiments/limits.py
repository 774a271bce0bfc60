"""Bounds on what one experiment may ask for, shared by validation and dataset loading.

Inline inputs travel in one CreateExperiment message, are validated and
stored as one row, and come back in every GetExperiment; they are capped at
``MAX_INLINE_INPUTS`` and ``MAX_INLINE_CHARS``. Larger datasets go in a
JSONL file in the workspace, named by ``spec.dataset_path``, read when the
experiment starts: up to ``MAX_INPUTS`` inputs.
"""

MAX_INPUTS = 100_000
MAX_INLINE_INPUTS = 10_000
# Characters of all inline prompts and expected answers together, and the system prompt.
MAX_INLINE_CHARS = 4_000_000
MAX_PROMPT_CHARS = 100_000
MAX_REPEATS = 1_000
MAX_TOTAL_SAMPLES = 100_000
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
MAX_SCORERS = 32
MAX_REGEX_CHARS = 1_000
# The longest output a regex check reads (RE2 is linear, so this bounds its time).
MAX_SUBJECT_CHARS = 1_000_000
# The time one built-in check (exact_match, contains, regex, json_valid) may take.
BUILTIN_TIME_LIMIT_SECONDS = 5.0
MAX_COMMAND_TIMEOUT_SECONDS = 300.0
DEFAULT_COMMAND_TIMEOUT_SECONDS = 10.0
MAX_LABELS = 64
MAX_LABEL_VALUE_CHARS = 256
MAX_REQUEST_ID_CHARS = 128
MAX_PATH_CHARS = 4_096
# The sandbox tool: model turns per sample, each command's time and output (per stream).
MAX_TOOL_TURNS = 50
DEFAULT_TOOL_TURNS = 8
DEFAULT_TOOL_COMMAND_TIMEOUT_SECONDS = 10.0
MAX_TOOL_OUTPUT_BYTES = 65_536
DEFAULT_TOOL_OUTPUT_BYTES = 4_096
# A longer command from the model is refused (a tool error), not run.
MAX_TOOL_COMMAND_CHARS = 16_384
