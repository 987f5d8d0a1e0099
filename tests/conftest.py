import http.server
import logging
import os
import sys
import threading

import pytest

# helpers shared by the tests (helpers, official_layout, toy_runs) import
# as top-level modules, and so does the benchmark's rig (benchmarking),
# whose official formulation is the tests' reference network
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(1, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'tools', 'analysis_tools'))


@pytest.fixture(scope='session')
def toy_workspace(tmp_path_factory):
    """A folder with small toy COCO and ADE20K sets under data/, where the
    toy configs' relative paths resolve."""
    from toy_runs import make_toy_data
    root = tmp_path_factory.mktemp('toy_workspace')
    make_toy_data(str(root))
    return root


def _messages_logged(level):
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    messages = []
    handler = logging.Handler(level=level)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def log_messages():
    """What the current MMLogger logs (INFO and above) during a test."""
    yield from _messages_logged(logging.INFO)


@pytest.fixture
def warnings_logged():
    """The warnings the current MMLogger logs during a test."""
    yield from _messages_logged(logging.WARNING)


@pytest.fixture(scope='session')
def runner_checkpoint(tmp_path_factory):
    """A checkpoint saved by mmengine's Runner after one epoch of two
    iterations (lr 1e-3, linear warm-up from 0.1x, end=2) of a
    whole model with a Wave-ViT-S backbone and a one-layer neck: message
    hub with HistoryBuffers, numpy scalars, optimizer, schedulers."""
    import torch
    from mmengine.model import BaseModel
    from mmengine.runner import Runner
    from torch import nn

    from wavevit_mm import WaveViT

    class DetectorLike(BaseModel):
        """A whole model with a Wave-ViT backbone, as mmdet/mmseg hold it."""

        def __init__(self):
            super().__init__()
            self.backbone = WaveViT('s')
            self.neck = nn.Conv2d(448, 4, 1)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            out = self.neck(self.backbone(inputs)[-1])
            return dict(loss=out.pow(2).mean()) if mode == 'loss' else out

    work_dir = tmp_path_factory.mktemp('runner')
    runner = Runner(
        model=DetectorLike(),
        work_dir=str(work_dir),
        experiment_name='wavevit_checkpoint_test',
        train_dataloader=dict(
            dataset=[dict(inputs=torch.randn(3, 32, 32)) for _ in range(4)],
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate'), batch_size=2),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                 end=2),
            dict(type='MultiStepLR', milestones=[8, 11], by_epoch=True)],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=1)))
    runner.train()
    return str(work_dir / 'epoch_1.pth')


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves tmp_path/served over HTTP on 127.0.0.1; the torch hub cache is
    tmp_path/torch_home. ``/cut/NAME`` serves NAME with its full
    Content-Length but only the first half of its bytes, as a connection
    cut short does. Yields (base URL, served folder, request log)."""
    served = tmp_path / 'served'
    served.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):
            requests.append(self.path)
            if not self.path.startswith('/cut/'):
                return super().do_GET()
            data = (served / self.path[len('/cut/'):]).read_bytes()
            self.send_response(200)
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.close_connection = True

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{httpd.server_address[1]}', served, requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def pytest_collection_modifyitems(config, items):
    """Where torch cannot export to ONNX, the tests that export (those in
    tests/test_tools/test_deployment/, and those marked ``onnx_export``)
    skip, saying which torch they need; so do those marked
    ``backbone_compile`` where torch cannot compile the backbone."""
    from wavevit_mm import compat
    no_export = pytest.mark.skip(reason=f'ONNX export needs torch '
                                 f'{compat.ONNX_EXPORT_TORCH} or newer')
    no_compile = pytest.mark.skip(reason=f'compiling the backbone needs '
                                  f'torch {compat.COMPILE_TORCH} or newer')
    export, compile_ = not compat.onnx_export_missing(), compat.has_custom_ops()
    for item in items:
        if not export and ('test_deployment' in item.path.parts
                           or item.get_closest_marker('onnx_export')):
            item.add_marker(no_export)
        if not compile_ and item.get_closest_marker('backbone_compile'):
            item.add_marker(no_compile)
