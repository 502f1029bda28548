// hepascope native frame ring: one writer, many readers, in POSIX shared memory.
//
// The grabber (writer), inference and recorder (readers) can be separate processes. The
// writer never blocks: it overwrites the oldest slot. Every slot is guarded by a seqlock
// (an odd sequence means "being written"), so a reader detects a slot that was overwritten
// while it was copying and never returns a torn frame.
//
// Layout of the segment (all offsets 64-byte aligned):
//
//   RingHeader   magic, layout version, slot count, slot capacity, slot stride,
//                segment size, write count (own cache line), writer-closed flag
//   slot 0       SlotHeader (seqlock sequence + metadata), then `capacity` pixel bytes
//   slot 1       ...
//   slot N-1
//
// Frame number n (0-based count of writes) lives in slot n % N. Its slot sequence is
// 2n+1 while the writer copies it and 2n+2 once it is complete: the sequence therefore
// also names the generation, and a reader that wants frame n accepts the slot only if it
// reads exactly 2n+2 both before and after its copy.
//
// Memory ordering, in short (details at each use):
//   writer: seq=2n+1 (relaxed) ; release fence ; copy meta+pixels ; seq=2n+2 (release) ;
//           write_count=n+1 (release)
//   reader: wc=write_count (acquire) ; s1=seq (acquire) ; copy meta+pixels ;
//           acquire fence ; s2=seq (relaxed) ; valid iff s1 == s2 == 2n+2
// std::atomic with acquire/release is what makes this correct on weakly ordered CPUs
// (ARM64 carts), not only on x86 where plain stores happen to be ordered.

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace nb = nanobind;

namespace {

// The atomics live in memory shared between processes. Only lock-free atomics are
// address-free (a lock-based atomic would keep its lock in a per-process table), so this is
// a hard requirement, not an optimisation.
static_assert(std::atomic<uint64_t>::is_always_lock_free,
              "std::atomic<uint64_t> must be lock-free to live in shared memory");
static_assert(std::atomic<uint32_t>::is_always_lock_free,
              "std::atomic<uint32_t> must be lock-free to live in shared memory");

constexpr uint64_t kMagic = 0x474e495250534548ull;  // "HESPRING" little-endian
constexpr uint32_t kVersion = 1;
constexpr size_t kAlign = 64;
constexpr size_t kSourceIdBytes = 64;  // 63 bytes + NUL
constexpr uint32_t kMaxSlots = 1u << 16;
constexpr uint64_t kMaxSlotBytes = 1ull << 34;  // 16 GiB: far above any ultrasound frame

struct alignas(kAlign) RingHeader {
    // Written last by the creator (release), checked first by readers (acquire): a reader
    // that attaches between ftruncate and initialisation sees 0 and waits.
    std::atomic<uint64_t> magic;
    uint32_t version;
    uint32_t slot_count;
    uint64_t slot_capacity;  // pixel bytes per slot
    uint64_t slot_stride;    // bytes from one slot to the next
    uint64_t segment_bytes;
    int64_t writer_pid;
    // Own cache line: every reader polls it, the writer stores it once per frame.
    alignas(kAlign) std::atomic<uint64_t> write_count;
    std::atomic<uint32_t> writer_closed;
};

// Copied as one block under the seqlock.
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

constexpr uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

std::string errno_text(int err) { return std::string(std::strerror(err)); }

uint64_t stride_for(uint64_t capacity) { return sizeof(SlotHeader) + round_up(capacity, kAlign); }

// A frame copied out of the ring into private heap memory (never aliasing the segment).
struct Copied {
    SlotMeta meta;
    uint8_t *data = nullptr;  // malloc'd, nbytes long; ownership passes to numpy
    bool ok = false;
};

// -----------------------------------------------------------------------------------------
// Writer
// -----------------------------------------------------------------------------------------

class Writer {
public:
    Writer(const std::string &name, uint32_t slots, uint64_t slot_bytes, bool replace)
        : name_(name), slots_(slots), capacity_(slot_bytes) {
        if (name.empty() || name[0] != '/')
            throw std::invalid_argument("ring name must start with '/': " + name);
        if (slots < 2 || slots > kMaxSlots)
            throw std::invalid_argument("slots must be in [2, 65536], got " +
                                        std::to_string(slots));
        if (slot_bytes == 0 || slot_bytes > kMaxSlotBytes)
            throw std::invalid_argument("slot_bytes must be in [1, 2**34], got " +
                                        std::to_string(slot_bytes));
        stride_ = stride_for(capacity_);
        size_ = sizeof(RingHeader) + uint64_t(slots_) * stride_;

        if (replace) shm_unlink(name.c_str());  // ENOENT is fine
        // O_EXCL: exactly one writer per ring. A leftover segment from a crashed run is
        // reported, never silently shared (its readers would be attached to the old one).
        int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
        if (fd < 0) {
            int err = errno;
            if (err == EEXIST)
                throw std::runtime_error("a ring named " + name +
                                         " already exists (another writer, or stale from a "
                                         "crashed run): pass replace=True to replace it");
            throw std::runtime_error("cannot create ring " + name + ": " + errno_text(err));
        }
        if (ftruncate(fd, off_t(size_)) != 0) {
            int err = errno;
            close(fd);
            shm_unlink(name.c_str());
            throw std::runtime_error("cannot size ring " + name + " to " +
                                     std::to_string(size_) + " bytes: " + errno_text(err));
        }
        struct stat st {};
        if (fstat(fd, &st) == 0) {
            dev_ = st.st_dev;
            ino_ = st.st_ino;
        }
        void *p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        int err = errno;
        close(fd);  // the mapping keeps the segment alive
        if (p == MAP_FAILED) {
            shm_unlink(name.c_str());
            throw std::runtime_error("cannot map ring " + name + ": " + errno_text(err));
        }
        base_ = static_cast<uint8_t *>(p);
        owner_pid_ = getpid();

        // ftruncate zero-fills: every slot sequence starts at 0 (= never written).
        auto *h = header();
        h->version = kVersion;
        h->slot_count = slots_;
        h->slot_capacity = capacity_;
        h->slot_stride = stride_;
        h->segment_bytes = size_;
        h->writer_pid = int64_t(owner_pid_);
        h->write_count.store(0, std::memory_order_relaxed);
        h->writer_closed.store(0, std::memory_order_relaxed);
        // Release: a reader that sees the magic (acquire) also sees the fields above.
        h->magic.store(kMagic, std::memory_order_release);
    }

    ~Writer() { do_close(true); }

    Writer(const Writer &) = delete;
    Writer &operator=(const Writer &) = delete;

    // Copies one frame into the next slot. Never blocks on readers.
    void write(const uint8_t *src, uint32_t h, uint32_t w, uint32_t c, uint64_t frame_seq,
               int64_t t_capture_ns, double pts, const std::string &source_id) {
        uint64_t nbytes = uint64_t(h) * w * c;
        if (nbytes > capacity_)
            throw std::invalid_argument("frame of " + std::to_string(nbytes) +
                                        " bytes does not fit the ring's slot capacity of " +
                                        std::to_string(capacity_) + " bytes");
        if (source_id.size() >= kSourceIdBytes)
            throw std::invalid_argument("source_id longer than 63 bytes");

        SlotMeta meta{};
        meta.frame_seq = frame_seq;
        meta.t_capture_ns = t_capture_ns;
        meta.pts = pts;
        meta.height = h;
        meta.width = w;
        meta.channels = c;
        meta.nbytes = nbytes;
        std::memcpy(meta.source_id, source_id.data(), source_id.size());

        std::lock_guard<std::mutex> lock(mu_);  // only against close() from another thread
        if (!base_) throw std::runtime_error("ring writer is closed");

        const uint64_t n = next_;
        SlotHeader *slot = slot_at(n % slots_);

        // 1. Mark the slot odd. The store itself may be relaxed: the release fence that
        //    follows orders it before every store of the payload below. A reader whose
        //    copy observed any payload byte of this write has, after its acquire fence,
        //    a happens-before edge from this fence and so must re-read seq >= 2n+1 and
        //    reject the copy. (This is the canonical seqlock writer; a release *store* of
        //    the odd value would not do: release only orders what comes before it.)
        slot->seq.store(2 * n + 1, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_release);

        // 2. Payload. Plain memcpy under a seqlock is the standard technique: readers
        //    may copy a half-written slot, but they validate the sequence after the copy
        //    and throw such copies away, so no torn frame escapes.
        std::memcpy(&slot->meta, &meta, sizeof(meta));
        std::memcpy(reinterpret_cast<uint8_t *>(slot) + sizeof(SlotHeader), src, nbytes);

        // 3. Even again, generation n. Release: a reader that acquires 2n+2 sees all of
        //    the payload stored above.
        slot->seq.store(2 * n + 2, std::memory_order_release);

        // 4. Publish. Release: a reader that acquires write_count == n+1 also sees slot
        //    sequence 2n+2 (or later), so "write_count > n" means frame n was completed.
        header()->write_count.store(n + 1, std::memory_order_release);
        next_ = n + 1;
    }

    void close_ring() { do_close(true); }

    uint64_t written() const { return next_; }
    uint32_t slots() const { return slots_; }
    uint64_t slot_bytes() const { return capacity_; }
    const std::string &name() const { return name_; }
    bool closed() {
        std::lock_guard<std::mutex> lock(mu_);
        return base_ == nullptr;
    }

private:
    RingHeader *header() { return reinterpret_cast<RingHeader *>(base_); }
    SlotHeader *slot_at(uint64_t i) {
        return reinterpret_cast<SlotHeader *>(base_ + sizeof(RingHeader) + i * stride_);
    }

    void do_close(bool unlink) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!base_) return;
        // Release: a reader that sees "closed" (acquire) also sees the final write count.
        header()->writer_closed.store(1, std::memory_order_release);
        munmap(base_, size_);
        base_ = nullptr;
        // Unlink only in the process that created the ring: a forked child that merely
        // inherited this object must not remove its parent's ring. Readers that already
        // mapped the segment keep a valid mapping after the unlink.
        if (unlink && getpid() == owner_pid_ && name_still_ours()) shm_unlink(name_.c_str());
    }

    // After `replace=True` by a newer writer the name belongs to a different segment:
    // closing this (older) writer must not remove the newer ring.
    bool name_still_ours() const {
        int fd = shm_open(name_.c_str(), O_RDONLY, 0);
        if (fd < 0) return false;  // already gone
        struct stat st {};
        const bool same = fstat(fd, &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_;
        close(fd);
        return same;
    }

    std::string name_;
    uint32_t slots_;
    uint64_t capacity_;
    uint64_t stride_ = 0;
    uint64_t size_ = 0;
    uint8_t *base_ = nullptr;
    pid_t owner_pid_ = 0;
    dev_t dev_ = 0;  // identity of our segment, see name_still_ours()
    ino_t ino_ = 0;
    uint64_t next_ = 0;  // single writer: the authoritative count lives here
    std::mutex mu_;
};

// -----------------------------------------------------------------------------------------
// Reader
// -----------------------------------------------------------------------------------------

class Reader {
public:
    Reader(const std::string &name, bool from_oldest) : name_(name) {
        if (name.empty() || name[0] != '/')
            throw std::invalid_argument("ring name must start with '/': " + name);
        // Readers only read: O_RDONLY + PROT_READ. A bug in a reader cannot corrupt frames
        // the other processes see. (Atomic 64-bit loads are plain loads on x86-64 and
        // ARM64, so read-only pages are fine for them.)
        int fd = shm_open(name.c_str(), O_RDONLY, 0);
        if (fd < 0) {
            int err = errno;
            if (err == ENOENT)
                throw std::runtime_error("no ring named " + name +
                                         ": is the pipeline (its writer) running?");
            throw std::runtime_error("cannot open ring " + name + ": " + errno_text(err));
        }
        // The writer may be between shm_open and initialisation: wait briefly for it.
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
        struct stat st {};
        for (;;) {
            if (fstat(fd, &st) != 0) {
                int err = errno;
                close(fd);
                throw std::runtime_error("cannot stat ring " + name + ": " + errno_text(err));
            }
            if (uint64_t(st.st_size) >= sizeof(RingHeader)) break;
            if (std::chrono::steady_clock::now() > deadline) {
                close(fd);
                throw std::runtime_error("ring " + name + " exists but was never initialised");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        size_ = uint64_t(st.st_size);
        void *p = mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
        int err = errno;
        close(fd);
        if (p == MAP_FAILED)
            throw std::runtime_error("cannot map ring " + name + ": " + errno_text(err));
        base_ = static_cast<const uint8_t *>(p);

        const RingHeader *h = header();
        // Acquire pairs with the creator's release store of the magic.
        while (h->magic.load(std::memory_order_acquire) != kMagic) {
            if (std::chrono::steady_clock::now() > deadline) {
                unmap();
                throw std::runtime_error("ring " + name +
                                         " is not a hepascope frame ring (bad magic)");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        if (h->version != kVersion) {
            uint32_t v = h->version;
            unmap();
            throw std::runtime_error("ring " + name + " has layout version " +
                                     std::to_string(v) + ", this build reads version " +
                                     std::to_string(kVersion));
        }
        slots_ = h->slot_count;
        capacity_ = h->slot_capacity;
        stride_ = h->slot_stride;
        // Never trust the header blindly: a corrupt one must not make us read past the map.
        if (slots_ < 2 || slots_ > kMaxSlots || capacity_ == 0 || capacity_ > kMaxSlotBytes ||
            stride_ != stride_for(capacity_) ||
            sizeof(RingHeader) + uint64_t(slots_) * stride_ > size_) {
            unmap();
            throw std::runtime_error("ring " + name + " has an inconsistent header");
        }
        uint64_t wc = h->write_count.load(std::memory_order_acquire);
        cursor_.store(from_oldest ? (wc > slots_ ? wc - slots_ : 0) : wc,
                      std::memory_order_relaxed);
    }

    ~Reader() {
        unmap();
        std::free(scratch_);
    }

    Reader(const Reader &) = delete;
    Reader &operator=(const Reader &) = delete;

    // The newest complete frame, or !ok if nothing was written yet. Retries when the
    // writer overwrites the slot while we copy (counted in torn_). Moves the cursor past
    // the returned frame so next() continues after it (those skips are not drops).
    Copied latest() {
        std::lock_guard<std::mutex> lock(mu_);
        check_open();
        for (;;) {
            uint64_t wc = header()->write_count.load(std::memory_order_acquire);
            if (wc == 0) return Copied{};
            const uint64_t n = wc - 1;
            Copied c = try_copy(n);
            if (c.ok) {
                if (cursor_.load(std::memory_order_relaxed) < n + 1)
                    cursor_.store(n + 1, std::memory_order_relaxed);
                return c;
            }
            // Overwritten under us: the writer has newer frames by now, so go again.
            torn_.fetch_add(1, std::memory_order_relaxed);
        }
    }

    // The frame after the cursor; waits up to timeout_s (<= 0: just poll).
    Copied next(double timeout_s) {
        std::lock_guard<std::mutex> lock(mu_);
        check_open();
        using clock = std::chrono::steady_clock;
        const bool wait = timeout_s > 0;
        const auto deadline =
            wait ? clock::now() + std::chrono::duration_cast<clock::duration>(
                                      std::chrono::duration<double>(timeout_s))
                 : clock::time_point{};
        uint64_t cur = cursor_.load(std::memory_order_relaxed);
        uint64_t dropped = 0, torn = 0;
        auto commit = [&] {
            cursor_.store(cur, std::memory_order_relaxed);
            drops_.fetch_add(dropped, std::memory_order_relaxed);
            torn_.fetch_add(torn, std::memory_order_relaxed);
        };
        for (;;) {
            uint64_t wc = header()->write_count.load(std::memory_order_acquire);
            if (cur < wc) {
                // Lapped: frames older than wc - slots have been overwritten.
                const uint64_t oldest = wc > slots_ ? wc - slots_ : 0;
                if (cur < oldest) {
                    dropped += oldest - cur;
                    cur = oldest;
                }
                Copied c = try_copy(cur);
                if (c.ok) {
                    ++cur;
                    commit();
                    return c;
                }
                // The writer overwrote this slot while we looked at it (it is now writing
                // frame cur+slots, before publishing it in write_count). Frame `cur` is
                // gone for good: skip it and count it as a drop, exactly once.
                ++torn;
                ++dropped;
                ++cur;
                continue;
            }
            if (!wait || clock::now() >= deadline) {
                commit();
                return Copied{};
            }
            // Poll with short sleeps rather than a futex: the writer then never makes a
            // system call (and never needs to know whether anyone waits), a wake-up costs
            // at most ~150 us against 16-33 ms between ultrasound frames, and sleeping
            // keeps an idle reader near 0 % CPU. Portable to macOS too (no futex there).
            std::this_thread::sleep_for(std::chrono::microseconds(100));
        }
    }

    uint64_t drops() const { return drops_.load(std::memory_order_relaxed); }
    uint64_t torn() const { return torn_.load(std::memory_order_relaxed); }
    uint64_t cursor() const { return cursor_.load(std::memory_order_relaxed); }
    uint32_t slots() const { return slots_; }
    uint64_t slot_bytes() const { return capacity_; }
    const std::string &name() const { return name_; }
    uint64_t written() {
        std::lock_guard<std::mutex> lock(mu_);
        check_open();
        return header()->write_count.load(std::memory_order_acquire);
    }
    bool writer_closed() {
        std::lock_guard<std::mutex> lock(mu_);
        check_open();
        // Acquire pairs with the writer's release in close(): after seeing 1 here, a
        // later write_count load sees the final count.
        return header()->writer_closed.load(std::memory_order_acquire) != 0;
    }
    void close_reader() {
        std::lock_guard<std::mutex> lock(mu_);
        unmap();
    }
    bool closed() {
        std::lock_guard<std::mutex> lock(mu_);
        return base_ == nullptr;
    }

private:
    const RingHeader *header() const { return reinterpret_cast<const RingHeader *>(base_); }
    const SlotHeader *slot_at(uint64_t i) const {
        return reinterpret_cast<const SlotHeader *>(base_ + sizeof(RingHeader) + i * stride_);
    }
    void check_open() const {
        if (!base_) throw std::runtime_error("ring reader is closed");
    }
    void unmap() {
        if (base_) munmap(const_cast<uint8_t *>(base_), size_);
        base_ = nullptr;
    }

    // One seqlock read attempt of frame n (requires write_count > n). ok=false when the
    // slot no longer holds frame n or was being rewritten during the copy.
    Copied try_copy(uint64_t n) {
        const SlotHeader *slot = slot_at(n % slots_);
        const uint64_t expect = 2 * n + 2;
        Copied out;

        // Acquire: pairs with the writer's release store of 2n+2, so if we read 2n+2 every
        // payload byte of frame n is visible, and our payload reads cannot be hoisted
        // above this load.
        const uint64_t s1 = slot->seq.load(std::memory_order_acquire);
        if (s1 != expect) return out;  // odd (being rewritten) or a newer generation

        std::memcpy(&out.meta, &slot->meta, sizeof(SlotMeta));
        // The metadata may be torn too: bound everything by the slot capacity *before*
        // using it, so a torn nbytes can never make us read past the slot.
        uint64_t nbytes = out.meta.nbytes;
        const bool shape_ok = nbytes > 0 && nbytes <= capacity_ &&
                              uint64_t(out.meta.height) * out.meta.width * out.meta.channels ==
                                  nbytes;
        if (shape_ok) {
            scratch_ensure(nbytes);
            std::memcpy(scratch_, reinterpret_cast<const uint8_t *>(slot) + sizeof(SlotHeader),
                        nbytes);
        }
        // Acquire fence: keeps the payload reads above from sinking below the re-read of
        // the sequence. If any of them saw a byte of a newer write, the writer's release
        // fence (after its odd store) synchronises with this fence and the re-read below
        // sees an odd or newer sequence.
        std::atomic_thread_fence(std::memory_order_acquire);
        const uint64_t s2 = slot->seq.load(std::memory_order_relaxed);
        if (s2 != s1) return out;  // torn: discard the copy
        if (!shape_ok)
            throw std::runtime_error("ring " + name_ + " holds a corrupt slot (bad metadata)");
        out.meta.source_id[kSourceIdBytes - 1] = '\0';
        out.data = scratch_;  // hand the buffer over; a fresh one is allocated next time
        scratch_ = nullptr;
        scratch_cap_ = 0;
        out.ok = true;
        return out;
    }

    void scratch_ensure(uint64_t nbytes) {
        if (scratch_cap_ >= nbytes) return;
        std::free(scratch_);
        scratch_ = static_cast<uint8_t *>(std::malloc(nbytes));
        if (!scratch_) {
            scratch_cap_ = 0;
            throw std::bad_alloc();
        }
        scratch_cap_ = nbytes;
    }

    std::string name_;
    const uint8_t *base_ = nullptr;
    uint64_t size_ = 0;
    uint32_t slots_ = 0;
    uint64_t capacity_ = 0;
    uint64_t stride_ = 0;
    // Process-local bookkeeping, only changed under mu_. Relaxed atomics so that the
    // properties can be read from another Python thread while next() waits (no lock).
    std::atomic<uint64_t> cursor_{0};  // next frame number this reader wants
    std::atomic<uint64_t> drops_{0};
    std::atomic<uint64_t> torn_{0};
    uint8_t *scratch_ = nullptr;
    uint64_t scratch_cap_ = 0;
    std::mutex mu_;
};

// -----------------------------------------------------------------------------------------
// Python bindings
// -----------------------------------------------------------------------------------------

using InImage = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;

void py_write(Writer &w, InImage img, uint64_t frame_seq, int64_t t_capture_ns,
              std::optional<double> pts, const std::string &source_id) {
    uint32_t c;
    if (img.ndim() == 2)
        c = 1;
    else if (img.ndim() == 3 && img.shape(2) >= 1 && img.shape(2) <= 4)
        c = uint32_t(img.shape(2));
    else
        throw std::invalid_argument("image must be HxW or HxWxC (C <= 4) uint8");
    if (img.shape(0) == 0 || img.shape(1) == 0)
        throw std::invalid_argument("image is empty");
    if (img.shape(0) > std::numeric_limits<uint32_t>::max() ||
        img.shape(1) > std::numeric_limits<uint32_t>::max())
        throw std::invalid_argument("image is too large");
    const double p = pts ? *pts : std::numeric_limits<double>::quiet_NaN();
    const uint8_t *src = img.data();
    // The pixel copy runs without the GIL; `img` keeps the source array alive.
    nb::gil_scoped_release release;
    w.write(src, uint32_t(img.shape(0)), uint32_t(img.shape(1)), c, frame_seq, t_capture_ns, p,
            source_id);
}

// (image, seq, t_capture_ns, pts or None, source_id) or None. The image is a fresh numpy
// array that owns its heap buffer through a capsule: it never aliases shared memory.
nb::object to_python(Copied &&c) {
    if (!c.ok) return nb::none();
    nb::capsule owner(c.data, [](void *p) noexcept { std::free(p); });
    size_t shape[3] = {c.meta.height, c.meta.width, c.meta.channels};
    const size_t ndim = c.meta.channels == 1 ? 2 : 3;
    nb::ndarray<nb::numpy, uint8_t> arr(c.data, ndim, shape, owner);
    nb::object image = arr.cast();
    nb::object pts = std::isnan(c.meta.pts) ? nb::none() : nb::cast(c.meta.pts);
    return nb::make_tuple(image, c.meta.frame_seq, c.meta.t_capture_ns, pts,
                          nb::str(c.meta.source_id));
}

nb::object py_latest(Reader &r) {
    Copied c;
    {
        nb::gil_scoped_release release;
        c = r.latest();
    }
    return to_python(std::move(c));
}

nb::object py_next(Reader &r, double timeout_s) {
    Copied c;
    {
        nb::gil_scoped_release release;
        c = r.next(timeout_s);
    }
    return to_python(std::move(c));
}

}  // namespace

NB_MODULE(_ring, m) {
    m.doc() = "Native shared-memory frame ring (one writer, many readers, seqlock slots).";
    m.attr("LAYOUT_VERSION") = kVersion;
    m.attr("SLOT_OVERHEAD") = sizeof(SlotHeader);
    m.attr("ALIGN") = kAlign;

    m.def("slot_stride", &stride_for, nb::arg("slot_bytes"),
          "Bytes one slot of `slot_bytes` pixel capacity occupies in the segment.");

    nb::class_<Writer>(m, "Writer")
        .def(nb::init<const std::string &, uint32_t, uint64_t, bool>(), nb::arg("name"),
             nb::arg("slots"), nb::arg("slot_bytes"), nb::arg("replace") = false,
             nb::call_guard<nb::gil_scoped_release>())
        .def("write", &py_write, nb::arg("image"), nb::arg("seq"), nb::arg("t_capture_ns"),
             nb::arg("pts").none(), nb::arg("source_id"))
        .def("close", &Writer::close_ring, nb::call_guard<nb::gil_scoped_release>())
        .def_prop_ro("name", &Writer::name)
        .def_prop_ro("slots", &Writer::slots)
        .def_prop_ro("slot_bytes", &Writer::slot_bytes)
        .def_prop_ro("written", &Writer::written)
        .def_prop_ro("closed", &Writer::closed);

    nb::class_<Reader>(m, "Reader")
        .def(nb::init<const std::string &, bool>(), nb::arg("name"),
             nb::arg("from_oldest") = false, nb::call_guard<nb::gil_scoped_release>())
        .def("latest", &py_latest)
        .def("next", &py_next, nb::arg("timeout_s") = 0.0)
        .def("close", &Reader::close_reader, nb::call_guard<nb::gil_scoped_release>())
        .def_prop_ro("name", &Reader::name)
        .def_prop_ro("slots", &Reader::slots)
        .def_prop_ro("slot_bytes", &Reader::slot_bytes)
        .def_prop_ro("drops", &Reader::drops)
        .def_prop_ro("torn", &Reader::torn)
        .def_prop_ro("cursor", &Reader::cursor)
        .def_prop_ro("written", &Reader::written)
        .def_prop_ro("writer_closed", &Reader::writer_closed)
        .def_prop_ro("closed", &Reader::closed);
}
