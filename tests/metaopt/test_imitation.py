"""Distilling a learned optimizer into another network (metaopt/imitation.py)."""
import pytest
import torch

from metaopt.estimators import Imitation
from metaopt.imitation import imitate, start_imitation
from metaopt.lstm import EVEN_FEATURES, LSTMConfig, LSTMOptimizerNet
from metaopt.meta_train import main
from metaopt.optim import save_lopt
from metaopt.tasks.quadratic import RegressionFamily
from metaopt.unroll import TaskState, start_task, unroll
from tests.metaopt.test_meta_train import TINY

K, LR = 4, 0.05


def _teacher():
    torch.manual_seed(0)
    return LSTMOptimizerNet(LSTMConfig(hidden=4, out_init_std=0.3))


def _run(net):
    task = RegressionFamily(batch_size=8).sample(0, "train")
    return start_task(task, net, horizon=5 * K)


@pytest.mark.parametrize("drive", ["teacher", "student"])
def test_a_student_equal_to_its_teacher_imitates_it_exactly_along_the_teachers_run(drive):
    teacher = _teacher()
    student = LSTMOptimizerNet(teacher.cfg)
    student.load_state_dict(teacher.state_dict())
    ts = _run(student)
    loss, state, stats = imitate(student, teacher, LR, start_imitation(ts, teacher), K, LR, drive=drive)
    assert loss.item() == 0 and stats["finite"] and state.run.step == K
    _, driven, _ = unroll(teacher, ts, K, LR)  # the teacher training the task itself
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(state.run.params, driven.params))
    assert torch.allclose(state.run.opt_state["h"], driven.opt_state["h"])


@pytest.mark.parametrize("drive", ["teacher", "student"])
def test_the_driver_moves_the_inner_run(drive):
    teacher, student = _teacher(), LSTMOptimizerNet(LSTMConfig(hidden=3, out_init_std=0.3))
    ts = _run(student)
    _, state, _ = imitate(student, teacher, LR, start_imitation(ts, teacher), 1, LR, drive=drive)
    driver, other = (teacher, student) if drive == "teacher" else (student, teacher)
    driven, not_driven = (unroll(net, _run(net), 1, LR)[1] for net in (driver, other))
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(state.run.params, driven.params))
    assert not all(torch.allclose(a, b, atol=1e-7) for a, b in zip(state.run.params, not_driven.params))


def test_a_cheaper_student_learns_the_teachers_updates():
    teacher = _teacher()
    student = LSTMOptimizerNet(LSTMConfig(hidden=2, output="directions", odd=False, features=list(EVEN_FEATURES[2:])))
    ts = _run(student)
    opt = torch.optim.Adam(student.parameters(), lr=0.02)
    losses = []
    for _ in range(60):
        loss, _, _ = imitate(student, teacher, LR, start_imitation(ts, teacher), K, LR)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.5 * losses[0]


def test_a_saved_imitation_continues_exactly():
    teacher = _teacher()
    estimator = Imitation(unroll=K, lr=LR, teacher=teacher, teacher_lr=LR)
    student = LSTMOptimizerNet(LSTMConfig(hidden=3))
    ts = _run(student)
    first = estimator.estimate(student, estimator.init_state(ts, student), seed=0)
    saved = estimator.state_dict(first.state)
    estimator.check_saved(saved)
    restored = estimator.load_state(saved, lambda run: TaskState.from_state_dict(run, ts.task))
    a, b = (estimator.estimate(student, state, seed=1) for state in (first.state, restored))
    assert a.finite and a.meta_loss == b.meta_loss and all(torch.equal(x, y) for x, y in zip(a.grads, b.grads))


def test_meta_train_distils_a_teacher_file_and_needs_one(tmp_path, capsys):
    save_lopt(_teacher(), tmp_path / "teacher.pt", lr=0.01)
    args = TINY + ["--meta-gradient", "imitate", "--teacher", str(tmp_path / "teacher.pt"), "--output", "directions",
                   "--no-odd", "--features", "grad_logmag,adam_grad_abs,momenta_abs,momenta_agree"]
    main(args + ["--meta-steps", "4", "--run-dir", str(tmp_path / "run")])
    main(args + ["--meta-steps", "6", "--run-dir", str(tmp_path / "run"), "--resume"])
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["meta_step"] == 6
    with pytest.raises(SystemExit) as exit_:
        main(TINY + ["--meta-gradient", "imitate", "--meta-steps", "2", "--run-dir", str(tmp_path / "bad")])
    assert exit_.value.code == 2 and "error: meta_gradient imitate needs --teacher" in capsys.readouterr().err
