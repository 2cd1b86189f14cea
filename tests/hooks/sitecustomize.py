"""Start-up hook for subprocess tests (``PYTHONPATH=tests/hooks``): with OKD_TEST_SIGTERM_AFTER_STEP=N
the trainer sends SIGTERM to its own process after its N-th training step -- a preemption at a known
step, however fast the run is."""
import os

_AFTER = int(os.environ.get("OKD_TEST_SIGTERM_AFTER_STEP", "0"))

if _AFTER:
    import signal

    from okd.engine.trainer import Trainer

    _real_step, _steps = Trainer.training_step, [0]

    def _step(self, images, targets):
        out = _real_step(self, images, targets)
        _steps[0] += 1
        if _steps[0] == _AFTER:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer saves after this step and exits 143
        return out

    Trainer.training_step = _step
