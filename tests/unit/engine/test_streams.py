import torch

from mlbseg.engine.streams import IndexStream


def _stream(size, batch, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return IndexStream(size, batch, generator), generator


def test_each_pass_is_a_permutation_without_straddling():
    stream, _ = _stream(10, 3)
    first_pass = torch.cat([stream.next() for _ in range(3)])
    assert len(set(first_pass.tolist())) == 9
    second_pass = torch.cat([stream.next() for _ in range(3)])
    assert len(set(second_pass.tolist())) == 9
    assert not torch.equal(first_pass, second_pass)


def test_small_sets_draw_with_replacement():
    stream, _ = _stream(2, 5)
    batch = stream.next()
    assert batch.shape == (5,)
    assert set(batch.tolist()) <= {0, 1}


def test_state_round_trip_continues_identically():
    stream, generator = _stream(7, 2, seed=3)
    for _ in range(5):
        stream.next()
    state, rng = stream.state_dict(), generator.get_state()
    expected = [stream.next() for _ in range(6)]
    resumed, resumed_generator = _stream(7, 2, seed=99)
    resumed_generator.set_state(rng)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, resumed.next()) for a in expected)
