// hepascope native frame ring: the segment layout and the copies that race by design.
//
// Layout of a segment (all offsets 64-byte aligned):
//
//   RingHeader   magic, layout version, slot count, slot capacity, slot stride, segment
//                size, the owner's identity (pid, start time, pid namespace); then on its
//                own cache line: write count, writer-closed and superseded flags, generation
//                and the frames written to earlier generations
//   slot 0       SlotHeader (seqlock sequence + metadata), then `capacity` pixel bytes
//   slot 1       ...
//   slot N-1
//
// The seqlock recipe (H.-J. Boehm, "Can seqlocks get along with programming language
// memory models?", MSPC 2012): in C++ every access that may race must be atomic, or the
// program has a data race and undefined behaviour, even when the reader later throws the
// copy away. So both sides move metadata and pixels as relaxed 64-bit atomic words, and
// the ordering comes from fences and the sequence:
//
//   writer: seq=2n+1 (relaxed) ; release fence ; relaxed word stores ; seq=2n+2 (release)
//   reader: s1=seq (acquire) ; relaxed word loads ; acquire fence ; s2=seq (relaxed)
//
// A relaxed 64-bit atomic load or store is a plain `mov` (x86-64) or `ldr`/`str` (ARM64):
// the price over memcpy is losing vectorisation (~0.1 ms for a 1 MB frame).

#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace hsring {

// The atomics live in memory shared between processes. Only lock-free atomics are
// address-free (a lock-based atomic would keep its lock in a per-process table), so this is
// a hard requirement, not an optimisation.
static_assert(std::atomic<uint64_t>::is_always_lock_free,
              "std::atomic<uint64_t> must be lock-free to live in shared memory");
static_assert(std::atomic<uint32_t>::is_always_lock_free,
              "std::atomic<uint32_t> must be lock-free to live in shared memory");
static_assert(std::atomic_ref<uint64_t>::is_always_lock_free &&
                  std::atomic_ref<uint64_t>::required_alignment <= 8,
              "word copies need lock-free 8-byte atomic_ref");

constexpr uint64_t kMagic = 0x474e495250534548ull;  // "HESPRING" little-endian
constexpr uint32_t kVersion = 2;                     // 2: owner identity, generations
constexpr size_t kAlign = 64;
constexpr size_t kSourceIdBytes = 64;  // 63 bytes + NUL
constexpr uint32_t kMaxSlots = 1u << 16;
constexpr uint64_t kMaxSlotBytes = 1ull << 34;  // 16 GiB: far above any ultrasound frame
constexpr uint32_t kMaxChannels = 4;

struct alignas(kAlign) RingHeader {
    // Written last by the creator (release), checked first by readers (acquire): a reader
    // that attaches between sizing and initialisation sees 0 and waits.
    std::atomic<uint64_t> magic;
    uint32_t version;
    uint32_t slot_count;
    uint64_t slot_capacity;  // pixel bytes per slot
    uint64_t slot_stride;    // bytes from one slot to the next
    uint64_t segment_bytes;
    // Who owns the segment: a later start removes it when this process is gone. The pid
    // stays at offset 40, where layout 1 had it, so that the sweep can read both.
    int64_t writer_pid;
    uint64_t writer_start;  // the owner's start time (clock ticks since boot); 0: unknown
    uint64_t writer_pidns;  // inode of the owner's pid namespace; 0: unknown
    // Own cache line: every reader polls it, the writer stores it once per frame.
    alignas(kAlign) std::atomic<uint64_t> write_count;
    std::atomic<uint32_t> writer_closed;
    // Set (release) before writer_closed when a newer generation of the ring (a new frame
    // geometry) has replaced this one under the same name: readers re-open the name.
    std::atomic<uint32_t> superseded;
    uint64_t generation;
    uint64_t frames_before;  // frames written to earlier generations: counts across them
};

// Copied as one block under the seqlock (a multiple of 8 bytes: whole atomic words).
struct SlotMeta {
    uint64_t frame_seq;
    int64_t t_capture_ns;
    double pts;  // NaN = none
    uint32_t height;
    uint32_t width;
    uint32_t channels;
    uint32_t reserved;
    uint64_t nbytes;
    char source_id[kSourceIdBytes];
};

struct alignas(kAlign) SlotHeader {
    std::atomic<uint64_t> seq;  // seqlock: odd = being written; 2n+2 = holds frame n
    uint64_t reserved;
    SlotMeta meta;
};

static_assert(sizeof(RingHeader) % kAlign == 0, "header must keep slots aligned");
static_assert(sizeof(SlotHeader) % kAlign == 0, "slot header must keep pixels aligned");
static_assert(sizeof(SlotMeta) % 8 == 0 && offsetof(SlotHeader, meta) % 8 == 0,
              "slot metadata is copied as whole 8-byte words");
static_assert(offsetof(RingHeader, writer_pid) == 40, "the sweep reads the pid of layout 1");

constexpr uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

inline uint64_t stride_for(uint64_t capacity) {
    return sizeof(SlotHeader) + round_up(capacity, kAlign);
}

inline std::string errno_text(int err) { return std::string(std::strerror(err)); }

// Thrown when a ring name does not exist; Python sees _ring.NotFoundError (a RuntimeError).
struct NotFound : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A frame copied out of the ring into private heap memory (never aliasing the segment).
struct Copied {
    SlotMeta meta;
    uint8_t *data = nullptr;  // malloc'd, round_up(nbytes, 8) long; ownership passes to numpy
    bool ok = false;
};

// The creating process, beside its pid: a pid alone may have been reused by now.
struct Owner {
    uint64_t start = 0;  // process start time, clock ticks since boot (0: unknown)
    uint64_t pidns = 0;  // pid namespace inode (0: unknown)
};

// Writes n bytes from src to the shared dst (8-byte aligned) as relaxed atomic words; the
// last word is padded with zeros (slots have room: their capacity is rounded up to 64).
inline void store_words(uint8_t *dst, const void *src, uint64_t n) {
    auto *d = reinterpret_cast<uint64_t *>(dst);
    const auto *s = static_cast<const uint8_t *>(src);
    const uint64_t full = n / 8;
    for (uint64_t i = 0; i < full; ++i) {
        uint64_t v;
        std::memcpy(&v, s + 8 * i, 8);
        std::atomic_ref<uint64_t>(d[i]).store(v, std::memory_order_relaxed);
    }
    if (n % 8) {
        uint64_t v = 0;
        std::memcpy(&v, s + 8 * full, n % 8);
        std::atomic_ref<uint64_t>(d[full]).store(v, std::memory_order_relaxed);
    }
}

// Reads round_up(n, 8) bytes of the shared src (8-byte aligned) as relaxed atomic words
// into private dst, which must have room for them. The segment is mapped read-only here:
// an atomic load does not write (atomic_ref<const T> only comes with C++26, hence the cast).
inline void load_words(void *dst, const uint8_t *src, uint64_t n) {
    auto *s = reinterpret_cast<uint64_t *>(const_cast<uint8_t *>(src));
    auto *d = static_cast<uint8_t *>(dst);
    const uint64_t words = round_up(n, 8) / 8;
    for (uint64_t i = 0; i < words; ++i) {
        const uint64_t v = std::atomic_ref<uint64_t>(s[i]).load(std::memory_order_relaxed);
        std::memcpy(d + 8 * i, &v, 8);
    }
}

// Whether a slot's (possibly forged or torn) metadata describes an image that fits a slot
// of `capacity` bytes. Every product is bounded before the next one, so nothing overflows:
// height and width are < 2**32, so height*width < 2**64; it must fit the slot (<= 2**34)
// before it is multiplied by at most 4 channels.
inline bool shape_fits(const SlotMeta &m, uint64_t capacity) {
    if (m.height == 0 || m.width == 0 || m.channels == 0 || m.channels > kMaxChannels)
        return false;
    const uint64_t hw = uint64_t(m.height) * m.width;
    return hw <= capacity && hw * m.channels == m.nbytes && m.nbytes <= capacity;
}

}  // namespace hsring
