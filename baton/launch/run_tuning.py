"""The kernel autotuner's choices of a run, kept in its run directory (``kernels/tuning_file.py``):
loaded at every start, so that the start times no candidates an earlier one (or ``baton
tune``) timed, and saved whenever the run has new ones."""

from __future__ import annotations

from pathlib import Path

from baton.kernels.tuning_file import FILE_NAME, count_choices, load_choices, save_choices, settings_timed


class RunTuning:
    """Where Triton kernels run (``file`` is None elsewhere, and then nothing is done)."""

    def __init__(self, run_dir: Path, uses_triton: bool, is_main: bool) -> None:
        self.file = run_dir / FILE_NAME if uses_triton else None
        self.is_main = is_main
        self.loaded = self.saved = 0
        if self.file is None:
            return
        self.loaded, why_none = load_choices(self.file)
        self.saved = self.loaded
        if is_main:
            loaded = f"{self.loaded} choices loaded from {self.file}"
            print(f"baton: kernel tuning: {loaded if self.loaded else why_none + '; the first step tunes'}")

    def first_step(self, seconds: float) -> dict:
        """What this start paid in its first step (compilation, kernel tuning); saves the choices."""
        record = {"first_step_s": seconds, "tuning_loaded": self.loaded}
        record["settings_timed"] = settings_timed() if self.file else 0
        self.save()
        return record

    def save(self) -> None:
        """Rank 0 keeps the choices in the run directory whenever there are new ones."""
        if self.file is None or not self.is_main or count_choices() == self.saved:
            return
        save_choices(self.file)
        self.saved = count_choices()
