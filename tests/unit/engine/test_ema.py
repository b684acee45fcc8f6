import torch

from mlbseg.engine.ema import EMATeacher


def test_update_follows_the_ramped_decay_and_copies_buffers():
    student = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    teacher = EMATeacher(student, decay=0.99)
    before = teacher.model[0].weight.clone()
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[1].running_mean.fill_(3.0)
    teacher.update(student)  # n = 1: a = min(1 - 1/2, 0.99) = 0.5
    torch.testing.assert_close(teacher.model[0].weight, 0.5 * before + 0.5 * student[0].weight)
    assert torch.equal(teacher.model[1].running_mean, student[1].running_mean)
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_counter_is_global_and_restored():
    student = torch.nn.Linear(2, 2)
    teacher = EMATeacher(student, decay=0.99)
    for _ in range(300):
        teacher.update(student)
    other = EMATeacher(student, decay=0.99)
    other.load_state_dict(teacher.state_dict())
    assert other.num_updates == 300
    before = other.model.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    other.update(student)  # a = 0.99 after the ramp
    torch.testing.assert_close(other.model.weight, 0.99 * before + 0.01 * student.weight)
