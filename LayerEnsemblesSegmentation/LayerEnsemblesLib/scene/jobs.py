"""Running the predictor off the main thread, and handing finished cases back to it.

Qt and MRML may only be touched from the main thread, but a forward pass takes seconds to minutes, so the
widget (and the web app) run the predictor in a worker thread and poll this object from a timer: the
worker only reads images and calls the predictor (torch releases the GIL in its operations), and every
finished case waits in a queue until the main thread commits it to the scene. Cancelling sets an event
the predictor polls; it then raises ``errors.Cancelled`` and nothing more is queued.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any

import SimpleITK as sitk

from ..errors import Cancelled
from .worklist import CaseInput, load_case_image


@dataclass
class FinishedCase:
    case: CaseInput
    prediction: Any
    reference: sitk.Image
    crop_index: tuple[int, int, int] | None


class InferenceJob:
    """Segment a list of cases in a worker thread; poll ``progress``, ``finished()`` and ``done``."""

    def __init__(self, predictor: Any, cases: list[CaseInput], predict_options: dict | None = None):
        self.predictor = predictor
        self.cases = list(cases)
        self.options = dict(predict_options or {})
        self.progress = 0.0
        self.message = "waiting"
        self.error: BaseException | None = None
        self._finished: queue.Queue[FinishedCase] = queue.Queue()
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="LayerEnsembles inference", daemon=True)

    def start(self) -> InferenceJob:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set() or isinstance(self.error, Cancelled)

    @property
    def done(self) -> bool:
        """True once the worker has stopped (finished, failed or cancelled); results may still be queued."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def finished(self) -> list[FinishedCase]:
        """The cases finished since the last call (to be committed on the main thread)."""
        items = []
        while True:
            try:
                items.append(self._finished.get_nowait())
            except queue.Empty:
                return items

    def _run(self) -> None:
        total = max(len(self.cases), 1)
        try:
            for position, case in enumerate(self.cases):
                def report(fraction: float, message: str, _position=position, _name=case.name) -> None:
                    self.progress = (_position + float(fraction)) / total
                    self.message = f"{_name} ({_position + 1}/{total}): {message}" if total > 1 else message

                report(0.0, "reading")
                if self._cancel.is_set():
                    raise Cancelled("cancelled by the user")
                image, reference, crop_index = load_case_image(case)
                prediction = self.predictor.predict(image, progress=report, cancel=self._cancel.is_set,
                                                    source=case.name, **self.options)
                if self._cancel.is_set():
                    raise Cancelled("cancelled by the user")
                self._finished.put(FinishedCase(case, prediction, reference, crop_index))
            self.progress, self.message = 1.0, "done"
        except BaseException as error:  # noqa: BLE001 - handed to the main thread, which reports it
            self.error = error
            self.message = "cancelled" if isinstance(error, Cancelled) else f"failed: {error}"
        finally:
            self._done.set()
