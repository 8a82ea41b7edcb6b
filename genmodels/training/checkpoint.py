"""Orbax checkpoints that survive preemption and corruption.

Orbax writes each checkpoint to a temporary folder and renames it when complete,
so a run killed mid-save (SIGKILL included) leaves the previous checkpoints
valid. If the newest checkpoint is nevertheless unreadable (a truncated or
corrupted file), ``restore_latest`` warns and falls back to the one before.
"""

import os
from typing import Any

from absl import logging
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves the train state every ``every`` steps; restores the newest good one."""

  def __init__(self, directory: str, every: int, max_to_keep: int = 3):
    self.directory = os.path.abspath(directory)
    self.every = int(every)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    if not force and (self.every <= 0 or step % self.every):
      return False
    if step in self._manager.all_steps():
      return False
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()
    return True

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any] | None:
    """(step, state) of the newest readable checkpoint, or None if there is none."""
    for step in reversed(self.steps()):
      try:
        state = self._manager.restore(
            step, args=ocp.args.StandardRestore(abstract_state))
        return step, state
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint at step %d in %s is unreadable (%s: %s); "
                        "falling back to the previous one", step,
                        self.directory, type(e).__name__, str(e)[:200])
    return None

  def close(self):
    self._manager.close()
