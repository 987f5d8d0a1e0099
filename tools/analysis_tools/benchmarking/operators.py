"""How many aten operators a backbone issues per call.

How many operators the host issues is what a GPU waits for when a step is
launch-bound; for a ``torch.compile``'d backbone the graph breaks say what
could not be traced.
"""
from typing import Callable, Dict, List, Sequence, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from .backbones import build_backbone, train_step
from .report import failed_row, format_shape, print_markdown


def count_aten_ops(fn: Callable[[], object]) -> int:
    """aten operators ``fn`` calls: the profiler events whose name starts
    with ``aten::``, nested ones included (an ``aten::linear`` and the
    ``aten::addmm`` it calls are two), after one warm-up call."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        fn()
    return sum(event.name.startswith('aten::')
               for event in profiler.events())


def operator_counts(names: Sequence[str], shape: Tuple[int, ...],
                    device: torch.device, compile_names: Sequence[str] = ()
                    ) -> List[Dict]:
    """aten operators per call of each backbone at ``shape``: ``eval``, one
    forward in eval mode without gradients, and ``train``, one
    :func:`~.backbones.train_step` in train mode; also for the
    ``torch.compile``'d models of ``compile_names``, whose warm-up call
    compiles them, with the graph breaks ``torch._dynamo.explain`` finds in
    each mode."""
    image = torch.randn(shape, device=device)
    rows = []
    for name, compiled in [(n, False) for n in names] + [
            (n, True) for n in compile_names]:
        row = dict(name=f'{name} (torch.compile)' if compiled else name,
                   input=list(shape))
        try:
            model = build_backbone(name).to(device)
            run = torch.compile(model) if compiled else model

            def forward() -> None:
                with torch.no_grad():
                    run(image)

            def forward_backward() -> None:
                model.zero_grad(set_to_none=True)
                train_step(run, image)

            for mode, call in (('eval', forward), ('train', forward_backward)):
                getattr(model, mode)()
                row[mode] = count_aten_ops(call)
                if compiled:  # what torch.compile could not trace
                    row[f'{mode}_graph_breaks'] = torch._dynamo.explain(
                        model)(image).graph_break_count
        except (ImportError, RuntimeError) as error:
            row = failed_row(row, error, device)
        model = run = None
        rows.append(row)
    return rows


def print_operator_counts(rows: List[Dict]) -> None:
    print_markdown(
        ['backbone', 'input', 'aten ops, eval forward',
         'aten ops, train forward + backward',
         'graph breaks (eval, train)'], rows,
        lambda row: [row['name'], format_shape(row['input']),
                     str(row['eval']), str(row['train']),
                     f'{row["eval_graph_breaks"]}, {row["train_graph_breaks"]}'
                     if 'eval_graph_breaks' in row else '-'])
