"""The CHMU's trackers and epochs on access streams with a known answer.

These drive the kernels' ``observe`` directly (the model's memory side is
the neighbour faked here); the guest-level acceptance test, with the real
QEMU, guest and bridge, is in ``test_linux_guest.py``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cosim.errors import CosimError
from cosim.timing import chmu, chmu_monitor, chmu_spec, config

PAGE = 4096
RAM = [(0, 256 << 20)]


def monitor(spec: str, preset: str = "cxl-direct") -> chmu_monitor.Monitor:
    cfg = chmu_spec.apply(config.load(preset), spec)
    C, ranges = chmu_monitor.allocate(cfg, RAM)
    return chmu_monitor.Monitor.create(cfg, C, ranges)


def hotcold(n: int, hot_pages: int, pages: int, hot_share: float, seed: int = 7) -> np.ndarray:
    """Page numbers: ``hot_share`` of them among the first ``hot_pages``, the rest anywhere."""
    rng = np.random.default_rng(seed)
    hot = rng.random(n) < hot_share
    return np.where(hot, rng.integers(0, hot_pages, n), rng.integers(0, pages, n))


def feed(m: chmu_monitor.Monitor, pages: np.ndarray, t0: int = 0, step: int = 1000,
         writes: bool = False) -> int:
    t = t0
    for p in pages:
        chmu.observe(m.C.p, m.C.arena, int(p) * PAGE, writes, t)
        t += step
    return t


def check_topk(T: chmu.TopK, i: int = 0) -> None:
    """Every held unit is in the hash table at its slot, and the heap orders slots by count."""
    k = int(T.size[i])
    entries = {int(e) >> chmu.SLOT_BITS: int(e) & chmu.SLOT_MASK for e in T.table[i] if e}
    assert len(entries) == k
    for slot in range(k):
        assert entries[int(T.unit[i, slot]) + 1] == slot
        assert T.heap[i, T.pos[i, slot]] == slot
    for at in range(1, k):
        assert T.cnt[i, T.heap[i, (at - 1) // 2]] <= T.cnt[i, T.heap[i, at]]


def check_space_saving(S: chmu.SpaceSaving, i: int = 0) -> None:
    """Held units are found through slot_of, and only they (an entry an evicted unit left
    names a slot holding another); order is sorted; last marks each run's end."""
    k = S.unit.shape[1]
    held = [slot for slot in range(k) if S.unit[i, slot] >= 0]
    for slot in held:
        assert S.slot_of[int(S.unit[i, slot])] == slot + 1     # one instance: first = 0
    named = np.flatnonzero(S.slot_of)
    assert np.count_nonzero(S.unit[i, S.slot_of[named] - 1] == named) == len(held)
    counts = S.cnt[i, S.order[i]]
    assert np.all(np.diff(counts) >= 0)
    assert np.all(S.pos[i, S.order[i]] == np.arange(k))
    for c in np.unique(counts):
        assert S.last[i, c] == np.flatnonzero(counts == c).max()


def test_space_saving_keeps_its_guarantees():
    m = monitor("tracker=space-saving,counters=64,bits=32")
    pages = hotcold(50_000, 16, 4096, 0.6)
    feed(m, pages)
    T = m.C.ss
    check_space_saving(T)
    true = np.bincount(pages, minlength=4096)
    held = T.unit[0, :64]
    cnt, err = T.cnt[0, :64], T.err[0, :64]
    # the counters add up to the stream; each overestimates by at most what it inherited
    assert int(cnt.sum()) == len(pages)
    assert np.all(cnt >= true[held]) and np.all(cnt - err <= true[held])
    # every unit more frequent than N/k is held
    assert set(np.flatnonzero(true > len(pages) / 64)) <= set(held.tolist())


def test_counters_saturate():
    m = monitor("tracker=space-saving+count-min,counters=8,bits=4,capacity=8")
    feed(m, np.zeros(100, dtype=np.int64))
    assert m.C.ss.cnt[0].max() == 15
    check_space_saving(m.C.ss)
    assert m.C.cm.max() == 15
    assert m.C.oracle[0] == 100         # the oracle is exact


def test_count_min_never_underestimates():
    m = monitor("tracker=count-min,depth=3,width=256,capacity=32,bits=32")
    pages = hotcold(30_000, 20, 8192, 0.5, seed=3)
    feed(m, pages)
    T = m.C.cmk
    check_topk(T)
    true = np.bincount(pages, minlength=8192)
    k = int(T.size[0])
    assert np.all(T.cnt[0, :k] >= true[T.unit[0, :k]])
    assert set(range(20)) <= set(T.unit[0, :k].tolist())


def test_hot_lists_and_accuracy_per_epoch():
    """Hot units of a 90/10 stream: every tracker finds them where the threshold separates."""
    m = monitor("tracker=space-saving+count-min+sample+oracle,counters=256,capacity=64,"
                "threshold=200,epoch=100us,sample-every=8")
    hot = 40
    t = feed(m, hotcold(60_000, hot, 32768, 0.9), step=1)
    m.advance(t)
    m.advance(m.next_end)                      # closes the epoch the stream lies in
    doc = m.document()
    assert doc["epochs"] >= 1
    inst = doc["last_epochs"][-1]["instances"][0]
    assert len(inst["hot_list"]) == hot
    assert all(addr < hot * PAGE for addr in inst["hot_list"])
    acc = doc["accuracy"]
    for name in ("oracle", "space-saving", "count-min", "sample"):
        assert acc[name]["epochs"] == 1
        assert acc[name]["precision"] >= 0.95 and acc[name]["recall"] >= 0.95, (name, acc)
    assert 0.89 < acc["oracle"]["coverage"] < 0.92
    assert doc["samples"]["taken"] == 60_000 // 8


def test_too_few_counters_show_in_the_figures():
    """Space-saving with fewer counters than hot units loses recall; the oracle does not."""
    m = monitor("tracker=space-saving+oracle,counters=32,capacity=256,threshold=100,epoch=100us")
    t = feed(m, hotcold(60_000, 200, 32768, 0.9), step=1)
    m.advance(t)
    m.advance(m.next_end)
    acc = m.document()["accuracy"]
    assert acc["oracle"]["recall"] == 1.0
    assert acc["space-saving"]["recall"] < 0.2


def test_epochs_follow_simulated_time_and_reset():
    m = monitor("tracker=space-saving,epoch=100us,threshold=1")
    e = m.epoch_ticks
    assert e == round(100e3 * 3.0 * 1000)      # 100 us at the default 3 GHz, in ticks
    m.advance(0)
    feed(m, np.arange(10), t0=0, step=1)
    m.advance(e - 1)
    assert m.epoch == 0
    m.advance(3 * e)                            # passes three epoch ends at once
    assert m.epoch == 3
    hist = m.document()["last_epochs"]
    assert [len(r["instances"][0]["hot_list"]) for r in hist] == [10, 0, 0]
    assert m.C.oracle.sum() == 0 and not (m.C.ss.unit[0] >= 0).any()


def test_always_on_accumulates():
    m = monitor("tracker=space-saving,epoch=100us,mode=always-on")
    m.advance(0)
    feed(m, np.arange(5), step=1)
    m.advance(m.next_end)
    feed(m, np.arange(5, 8), t0=m.next_end, step=1)
    m.advance(m.next_end)
    assert len(m.document()["last_epochs"][-1]["instances"][0]["hot_list"]) == 8


def test_filters_and_downsampling():
    m = monitor("tracker=space-saving,access=r,downsample=4,range=0+256M")
    feed(m, np.arange(8), writes=True)
    assert m.C.seen.sum() == 0                  # writes are not counted with access=r
    feed(m, np.arange(8))
    assert m.C.seen[0, chmu.SEEN_ORACLE] == 8
    assert m.C.seen[0, chmu.SEEN_TRACKED] == 2  # every 4th access
    with pytest.raises(CosimError, match="leaves no CXL memory"):
        monitor("tracker=oracle,range=256M+256M")   # RAM is 256 MiB: nothing left to count


def test_state_round_trip_continues_exactly():
    """A monitor restored mid-run (state + arrays) ends where the straight one does."""
    spec = "tracker=space-saving+count-min+sample,counters=64,capacity=16,epoch=100us"
    pages = hotcold(40_000, 30, 16384, 0.8)
    straight = monitor(spec)
    straight.advance(0)
    t = 0
    for part in np.array_split(pages, 4):
        t = feed(straight, part, t0=t, step=2000)
        straight.advance(t)
    a = monitor(spec)
    a.advance(0)
    t = 0
    for k, part in enumerate(np.array_split(pages, 4)):
        if k == 2:
            b = monitor(spec)
            b.load(copy.deepcopy(a.state()))
            b.C.arena[...] = a.C.arena
            a = b
        t = feed(a, part, t0=t, step=2000)
        a.advance(t)
    assert a.document() == straight.document()


@pytest.mark.parametrize("spec, message", [
    ("unit=3000", "--chmu unit=3000: a power of two from 256 B to 1G"),
    ("unit=128", "--chmu unit=128: a power of two from 256 B to 1G"),
    ("epoch=50us", "--chmu epoch=50us: a time from 100us to 100s"),
    ("epoch=200s", "--chmu epoch=200s: a time from 100us to 100s"),
    ("epoch=5", "--chmu epoch=5: want a time with its unit"),
    ("counters=0", "--chmu counters=0: must be an integer in 1..1048576"),
    ("tracker=lru", "--chmu tracker=lru: must be one or more of oracle, space-saving, "
                    "count-min, sample"),
    ("range=1M+256M", "--chmu range=1M+256M: BASE+SIZE, multiples of 256M"),
    ("colour=red", "--chmu colour: unknown key"),
    ("counters", "--chmu 'counters': want key=value"),
])
def test_bad_specs_say_what_is_accepted(spec: str, message: str):
    with pytest.raises(CosimError) as e:
        chmu_spec.apply(config.load(), spec)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_spec_sets_the_fields():
    cfg = chmu_spec.apply(config.load(), "tracker=count-min+oracle,unit=64K,epoch=2ms,"
                                         "capacity=32,sample-period=10us")
    c = cfg.chmu
    assert c.enabled and c.tracker == "count-min+oracle" and c.unit_bytes == 65536
    assert c.epoch_us == 2000.0 and c.hot_list == 32 and c.sample_period_ns == 10_000.0


def test_dram_only_machine_has_nothing_to_monitor():
    cfg = chmu_spec.apply(config.load("dram-only"), "")
    with pytest.raises(CosimError, match="no CXL memory"):
        chmu_monitor.allocate(cfg, RAM)


def test_samples_go_to_a_file_with_their_type(tmp_path):
    out = tmp_path / "samples.csv"
    m = monitor(f"tracker=sample,sample-every=4,epoch=100us,samples={out}")
    m.advance(0)
    feed(m, np.arange(8), step=1)
    feed(m, np.arange(8), step=1, t0=100, writes=True)
    m.advance(m.next_end)
    lines = out.read_text().splitlines()
    assert lines[0] == "epoch,time_ns,address,type"
    assert lines[1:] == ["0,0,0x0,r", "0,0,0x4000,r", "0,0,0x0,w", "0,0,0x4000,w"]
    with pytest.raises(CosimError, match="cannot write"):
        monitor(f"tracker=sample,samples={tmp_path / 'no' / 'such' / 'dir.csv'}")


def test_listeners_get_each_epochs_samples():
    """The control plane's stream (a listener) gets the rows the sample file gets."""
    m = monitor("tracker=sample,sample-every=2,epoch=100us")
    got: list = []
    m.listeners.append(got.append)
    m.advance(0)
    feed(m, np.arange(6), step=1)
    m.advance(m.next_end)
    m.advance(m.next_end)
    assert [b.epoch for b in got] == [0, 1]
    assert got[0].address == [0, 2 * PAGE, 4 * PAGE] and got[0].types == "rrr"
    assert got[1].address == [] and got[1].dropped == 0


def test_the_guest_may_choose_a_larger_unit():
    """A unit written to CFG2 counts from the next epoch, with fresh counters; one the
    capability does not list (smaller than the configured one, not a power of two) is
    ignored."""
    from cosim.chmu_device import Device, encode_epoch
    m = monitor("tracker=space-saving+oracle,unit=4K,counters=64,epoch=100us,threshold=1")
    m.device = type("Registers", (), {"settings": staticmethod(Device.settings)})()
    cfg1 = 1 << 16 | 1 << 32
    m.advance(0)
    for unit, counted in ((64 << 10, 64 << 10), (2 << 10, 64 << 10), (96 << 10, 64 << 10),
                          (4 << 10, 4 << 10)):
        m.stage((cfg1, unit | encode_epoch(100) << 48))
        m.advance(m.next_end)
        assert m.unit_bytes == counted and m.C.oracle.sum() == 0
        t = feed(m, np.array([0, 1, 17, 17, 40]), t0=m.next_end - m.epoch_ticks, step=1)
        m.advance(t)
        check_space_saving(m.C.ss)
        m.advance(m.next_end)
        listed = m.document()["last_epochs"][-1]["instances"][0]["hot_list"]
        pages = {0, 1, 17, 40}
        assert sorted(listed) == sorted({p * PAGE // counted * counted for p in pages}), unit
    assert m.document()["config"]["device_unit_bytes"] == 4 << 10


def test_register_blocks_hold_their_instances_and_share_the_configuration(tmp_path):
    """Two blocks (the PCI device's and a cxl-type3 device's), an instance each: hot lists
    land in the block of their instance, and a configuration the guest writes to either
    block is adopted and shown by both."""
    from cosim import chmu_device as dev
    cfg = chmu_spec.apply(config.load("cxl-direct"),
                          "tracker=space-saving,unit=4K,counters=64,epoch=100us,threshold=1")
    C, ranges = chmu_monitor.allocate(cfg, [(0, 128 << 20), (1 << 32, 128 << 20)])
    m = chmu_monitor.Monitor.create(cfg, C, ranges)
    files = []
    for name in ("pci.ram", "type3.ram"):
        files.append(tmp_path / name)
        files[-1].write_bytes(bytes(dev.BLOCK_BYTES))
    m.device = d = dev.Device([(files[0], [0]), (files[1], [1])], m)
    m.publish = True
    pci, t3 = d.blocks
    base = dev.INSTANCE_BASE
    for blk, lo in ((pci, 0), (t3, 1 << 32)):
        assert blk.q(dev.COMMON_CAP1) >> 8 & 0xFF == 1
        assert blk.q(base + dev.X_BASE) == lo
    m.advance(0)
    t = feed(m, np.array([(1 << 32) // PAGE + 3] * 5), t0=0, step=1)
    m.advance(max(t, m.next_end))
    d.deliver()
    tails = [blk.q(base + dev.HEAD_TAIL) >> 16 & 0xFFFF for blk in (pci, t3)]
    assert tails == [0, 1], "the hot unit is the type3 window's"
    assert t3.q(base + dev.HOTLIST) >> cfg.chmu.counter_bits == 3
    for written, other, threshold in ((t3, pci, 77), (pci, t3, 5)):
        cfg1 = written.q(base + dev.CFG1)
        written.set(base + dev.CFG1, cfg1 & 0xFFFF_FFFF | threshold << 32)
        d.deliver()
        assert m.staged[-1][0] >> 32 == threshold
        assert other.q(base + dev.CFG1) >> 32 == threshold, "both blocks show it"
        m.advance(m.next_end)
        assert m.threshold == threshold
