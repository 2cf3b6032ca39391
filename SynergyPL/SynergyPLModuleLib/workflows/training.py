"""Training: retrain the model on the submitted labels and report its progress.

A piece of :class:`~SynergyPLModuleLib.logic.LabelingLogic`: its state (client, scene nodes,
current case) and signals are the facade's, shared by every piece; results go out through signals only.
"""

from __future__ import annotations

from SynergyPLLib.common.job_status import JobStatus

from ..background import CallContext
from ..messages import TrainingProgress, _client_module, training_summary
from .base import LogicBase


class TrainingWorkflow(LogicBase):
    """Training: retrain, progress, cancel.

    Mixed into the facade (:class:`~SynergyPLModuleLib.logic.LabelingLogic`), whose state and signals it uses.
    """

    def retrain(self, iterations: int | None = None) -> None:
        """Start a training round (or follow the one already running); progress via ``training_progress``."""
        client_module = _client_module()

        def work(ctx: CallContext):
            client = self._client()
            try:
                job = client.train(iterations=iterations or None)
            except client_module.ConflictError:
                running = (client.info().get("jobs") or {}).get("training")
                if not running:
                    raise
                job = running
                ctx.report({"note": f"A training round is already running (job {job['id']}); following it."})
            job = self._follow_job(client, job, ctx)
            if job["status"] != JobStatus.DONE:
                raise client_module.JobFailedError(job)
            return job, client.info()

        def progress(update) -> None:
            if isinstance(update, dict) and "note" in update:
                self.status.emit(update["note"])
            elif isinstance(update, dict):
                self.training_progress.emit(TrainingProgress.from_job(update))

        def done(result) -> None:
            job, info = result
            self._apply_info(self.url, info)
            new_version = job.get("model_version")
            if new_version is not None:
                self.model_version = int(new_version)
                self.model_version_changed.emit(self.model_version)
            self.status.emit(f"Training round finished: {training_summary(job)}. Pseudo-label now uses it.")
            self.training_finished.emit(job)

        self.status.emit("Starting a training round…")
        self._start("train", work, done, progress)

    def cancel_training(self) -> None:
        self.cancel("train")
