// hepascope native frame ring: a reader (any number, in any process, read-only).
//
// Readers never trust the segment: every header field and every slot's metadata is bounded
// before use (a forged or corrupt segment is a runtime_error, never a read past the map),
// latest() gives up after a bounded number of inconsistent attempts, and a timeout too
// large for the clock waits without a deadline.

#pragma once

#include "ring_layout.hpp"

#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <new>
#include <optional>
#include <thread>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace hsring {

// latest() gives up after this many inconsistent attempts: a healthy ring needs one or
// two (the newest slot is only rewritten after slots-1 more frames), so more means a
// corrupt segment, not a fast writer.
constexpr int kLatestAttempts = 1000;
// A timeout of this many seconds or more (or inf) waits without a deadline: a deadline
// computed from 1e30 s would overflow the clock.
constexpr double kForeverS = 1e9;

// Opens the shm object `name` read-only and maps its first `min_bytes` or more (the whole
// object when whole=true), waiting up to a second for a creator between shm_open and
// sizing. Returns the mapping and its length; NotFound when there is no such name.
inline std::pair<const uint8_t *, uint64_t> map_readonly(const std::string &name,
                                                         uint64_t min_bytes, bool whole) {
    int fd = shm_open(name.c_str(), O_RDONLY, 0);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT)
            throw NotFound("no ring named " + name + ": is the pipeline (its writer) running?");
        throw std::runtime_error("cannot open ring " + name + ": " + errno_text(err));
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    struct stat st {};
    for (;;) {
        if (fstat(fd, &st) != 0) {
            int err = errno;
            close(fd);
            throw std::runtime_error("cannot stat ring " + name + ": " + errno_text(err));
        }
        if (uint64_t(st.st_size) >= min_bytes) break;
        if (std::chrono::steady_clock::now() > deadline) {
            close(fd);
            throw std::runtime_error("ring " + name + " exists but was never initialised");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    const uint64_t len = whole ? uint64_t(st.st_size) : min_bytes;
    void *p = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
    int err = errno;
    close(fd);
    if (p == MAP_FAILED)
        throw std::runtime_error("cannot map ring " + name + ": " + errno_text(err));
    return {static_cast<const uint8_t *>(p), len};
}

class Reader {
public:
    Reader(const std::string &name, bool from_oldest) : name_(name) {
        if (name.empty() || name[0] != '/')
            throw std::invalid_argument("ring name must start with '/': " + name);
        // Readers only read: O_RDONLY + PROT_READ. A bug in a reader cannot corrupt frames
        // the other processes see. (Relaxed and acquire 64-bit atomic loads are plain
        // loads on x86-64 and ARM64, so read-only pages are fine for them.)
        auto [p, len] = map_readonly(name, sizeof(RingHeader), true);
        base_ = p;
        size_ = len;
        const RingHeader *h = header();
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
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
        generation_ = h->generation;
        frames_before_ = h->frames_before;
        owner_ = {uint64_t(h->writer_pid), h->writer_start, h->writer_pidns};
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
    // writer overwrites the slot while we copy (counted in torn_), a bounded number of
    // times. Moves the cursor past the returned frame so next() continues after it (those
    // skips are not drops).
    Copied latest() {
        std::lock_guard<std::mutex> lock(mu_);
        check_open();
        for (int attempt = 0; attempt < kLatestAttempts; ++attempt) {
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
            if (attempt >= 8) std::this_thread::yield();
        }
        throw std::runtime_error(
            "ring " + name_ + " is inconsistent: no complete frame where its write count " +
            "says one is, after " + std::to_string(kLatestAttempts) + " attempts");
    }

    // The frame after the cursor; waits up to timeout_s (<= 0 or NaN: just poll; at least
    // kForeverS or inf: no deadline).
    Copied next(double timeout_s) {
        std::lock_guard<std::mutex> lock(mu_);
        check_open();
        using clock = std::chrono::steady_clock;
        const bool wait = timeout_s > 0;
        const bool forever = wait && !(timeout_s < kForeverS);
        const auto deadline =
            wait && !forever ? clock::now() + std::chrono::duration_cast<clock::duration>(
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
            if (!wait || (!forever && clock::now() >= deadline)) {
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
    uint64_t generation() const { return generation_; }
    uint64_t frames_before() const { return frames_before_; }
    std::array<uint64_t, 3> owner() const { return owner_; }  // pid, start, pid namespace
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
        // later write_count (or superseded) load sees the final value.
        return header()->writer_closed.load(std::memory_order_acquire) != 0;
    }
    bool superseded() {
        std::lock_guard<std::mutex> lock(mu_);
        check_open();
        // Acquire pairs with the writer's release in supersede(): every frame it wrote to
        // this generation is visible to a later write_count load.
        return header()->superseded.load(std::memory_order_acquire) != 0;
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
        // payload word of frame n is visible, and our payload loads cannot be hoisted
        // above this load.
        const uint64_t s1 = slot->seq.load(std::memory_order_acquire);
        if (s1 != expect) return out;  // odd (being rewritten) or a newer generation

        load_words(&out.meta, reinterpret_cast<const uint8_t *>(&slot->meta), sizeof(SlotMeta));
        // The metadata may be torn, or forged: bound everything by the slot capacity
        // *before* using it, so that it can never make us read past the slot.
        const bool shape_ok = shape_fits(out.meta, capacity_);
        if (shape_ok) {
            scratch_ensure(round_up(out.meta.nbytes, 8));
            load_words(scratch_, reinterpret_cast<const uint8_t *>(slot) + sizeof(SlotHeader),
                       out.meta.nbytes);
        }
        // Acquire fence: keeps the payload loads above from sinking below the re-read of
        // the sequence. If any of them saw a word of a newer write, the writer's release
        // fence (after its odd store) synchronises with this fence and the re-read below
        // sees an odd or newer sequence.
        std::atomic_thread_fence(std::memory_order_acquire);
        const uint64_t s2 = slot->seq.load(std::memory_order_relaxed);
        if (s2 != s1) return out;  // torn: discard the copy
        if (!shape_ok)
            throw std::runtime_error("ring " + name_ + " holds a corrupt slot (bad metadata: " +
                                     std::to_string(out.meta.height) + "x" +
                                     std::to_string(out.meta.width) + "x" +
                                     std::to_string(out.meta.channels) + ", " +
                                     std::to_string(out.meta.nbytes) + " bytes)");
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
    uint64_t generation_ = 0;
    uint64_t frames_before_ = 0;
    std::array<uint64_t, 3> owner_{};
    // Process-local bookkeeping, only changed under mu_. Relaxed atomics so that the
    // properties can be read from another Python thread while next() waits (no lock).
    std::atomic<uint64_t> cursor_{0};  // next frame number this reader wants
    std::atomic<uint64_t> drops_{0};
    std::atomic<uint64_t> torn_{0};
    uint8_t *scratch_ = nullptr;
    uint64_t scratch_cap_ = 0;
    std::mutex mu_;
};

// (version, writer_pid, writer_start, writer_pidns) of the segment `name`, for the sweep of
// segments left by dead owners; nullopt when it is not an initialised hepascope ring (a
// creator still sizing it, or a foreign object). Layout 1 kept only the pid (at the same
// offset): start and namespace are 0 (unknown) there. NotFound when the name is gone.
inline std::optional<std::array<uint64_t, 4>> peek_owner(const std::string &name) {
    int fd = shm_open(name.c_str(), O_RDONLY, 0);
    if (fd < 0) {
        int err = errno;
        if (err == ENOENT) throw NotFound("no ring named " + name);
        throw std::runtime_error("cannot open " + name + ": " + errno_text(err));
    }
    struct stat st {};
    const bool sized = fstat(fd, &st) == 0 && uint64_t(st.st_size) >= sizeof(RingHeader);
    void *p = sized ? mmap(nullptr, sizeof(RingHeader), PROT_READ, MAP_SHARED, fd, 0)
                    : MAP_FAILED;
    close(fd);
    if (p == MAP_FAILED) return std::nullopt;
    const auto *h = static_cast<const RingHeader *>(p);
    std::optional<std::array<uint64_t, 4>> out;
    if (h->magic.load(std::memory_order_acquire) == kMagic) {
        const uint32_t v = h->version;
        out = std::array<uint64_t, 4>{v, uint64_t(h->writer_pid), v >= 2 ? h->writer_start : 0,
                                      v >= 2 ? h->writer_pidns : 0};
    }
    munmap(p, sizeof(RingHeader));
    return out;
}

}  // namespace hsring
