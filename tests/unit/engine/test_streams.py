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


def test_mixed_stream_takes_its_share_from_the_subset_in_every_group():
    from mlbseg.engine.streams import MixedIndexStream

    generator = torch.Generator().manual_seed(0)
    subset = torch.tensor([3, 7, 11])
    stream = MixedIndexStream(subset, size=20, batch_size=4, subset_count=2, groups=2, generator=generator)
    for _ in range(10):
        groups = stream.next().view(2, 4)
        assert set(groups[:, :2].flatten().tolist()) <= {3, 7, 11}
        assert groups.max() < 20


def test_mixed_stream_state_round_trip():
    from mlbseg.engine.streams import MixedIndexStream

    def build(seed):
        generator = torch.Generator().manual_seed(seed)
        return MixedIndexStream(
            torch.arange(5), 12, 3, subset_count=1, groups=1, generator=generator
        ), generator

    stream, generator = build(1)
    for _ in range(4):
        stream.next()
    state, rng = stream.state_dict(), generator.get_state()
    expected = [stream.next() for _ in range(5)]
    resumed, resumed_generator = build(7)
    resumed_generator.set_state(rng)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, resumed.next()) for a in expected)
