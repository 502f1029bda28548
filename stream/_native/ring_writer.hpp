// hepascope native frame ring: the writer (one per ring name, in the grabber's process).
//
// The segment's memory is reserved when it is created (posix_fallocate): a full /dev/shm
// is an error at start, never a SIGBUS at the first write into a page tmpfs cannot back.
// A new generation (a new frame geometry) is a new segment under the same name; the old
// one is then marked superseded, and its readers re-open the name (ring_reader.hpp).

#pragma once

#include "ring_layout.hpp"

#include <cerrno>
#include <cstdio>
#include <mutex>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/statvfs.h>
#endif

namespace hsring {

inline std::string megabytes(uint64_t bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f MB", double(bytes) / 1e6);
    return buf;
}

// Gives the segment its size and reserves every page of it now. ftruncate alone makes a
// sparse tmpfs file: the first write into a page /dev/shm cannot back is a SIGBUS.
inline void reserve(int fd, const std::string &name, uint64_t size, uint32_t slots,
                    uint64_t stride) {
#if defined(__linux__)
    const int rc = posix_fallocate(fd, 0, off_t(size));
    if (rc == 0) return;
    std::string why = "ring " + name + " needs " + megabytes(size) + " of shared memory (" +
                      std::to_string(slots) + " slots of " + std::to_string(stride) +
                      " bytes)";
    struct statvfs vfs {};
    if (statvfs("/dev/shm", &vfs) == 0)
        why += " but /dev/shm has " + megabytes(uint64_t(vfs.f_bavail) * vfs.f_frsize) +
               " free";
    throw std::runtime_error(why + ": " + errno_text(rc));
#else
    (void)slots;
    (void)stride;
    if (ftruncate(fd, off_t(size)) != 0)
        throw std::runtime_error("cannot size ring " + name + " to " + std::to_string(size) +
                                 " bytes: " + errno_text(errno));
#endif
}

// -----------------------------------------------------------------------------------------
// Writer
// -----------------------------------------------------------------------------------------

class Writer {
public:
    Writer(const std::string &name, uint32_t slots, uint64_t slot_bytes, bool replace,
           uint64_t generation, uint64_t frames_before, Owner owner)
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
        try {
            reserve(fd, name, size_, slots_, stride_);
        } catch (...) {
            close(fd);
            shm_unlink(name.c_str());
            throw;
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

        // The reserved pages read as zeros: every slot sequence starts at 0 (never written).
        auto *h = header();
        h->version = kVersion;
        h->slot_count = slots_;
        h->slot_capacity = capacity_;
        h->slot_stride = stride_;
        h->segment_bytes = size_;
        h->writer_pid = int64_t(owner_pid_);
        h->writer_start = owner.start;
        h->writer_pidns = owner.pidns;
        h->generation = generation;
        h->frames_before = frames_before;
        h->write_count.store(0, std::memory_order_relaxed);
        h->writer_closed.store(0, std::memory_order_relaxed);
        h->superseded.store(0, std::memory_order_relaxed);
        // Release: a reader that sees the magic (acquire) also sees the fields above.
        h->magic.store(kMagic, std::memory_order_release);
    }

    ~Writer() { do_close(); }

    Writer(const Writer &) = delete;
    Writer &operator=(const Writer &) = delete;

    // Copies one frame into the next slot. Never blocks on readers.
    void write(const uint8_t *src, uint32_t h, uint32_t w, uint32_t c, uint64_t frame_seq,
               int64_t t_capture_ns, double pts, const std::string &source_id) {
        uint64_t nbytes = uint64_t(h) * w * c;  // h, w < 2**32 and c <= 4: no overflow
        if (nbytes > capacity_ || uint64_t(h) * w > capacity_)
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
        //    copy observed any payload word of this write has, after its acquire fence,
        //    a happens-before edge from this fence and so must re-read seq >= 2n+1 and
        //    reject the copy. (A release *store* of the odd value would not do: release
        //    only orders what comes before it.)
        slot->seq.store(2 * n + 1, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_release);

        // 2. Payload, as relaxed atomic words (ring_layout.hpp): readers copy it
        //    concurrently and throw torn copies away, and only atomics may race.
        store_words(reinterpret_cast<uint8_t *>(&slot->meta), &meta, sizeof(meta));
        store_words(reinterpret_cast<uint8_t *>(slot) + sizeof(SlotHeader), src, nbytes);

        // 3. Even again, generation n. Release: a reader that acquires 2n+2 sees all of
        //    the payload stored above.
        slot->seq.store(2 * n + 2, std::memory_order_release);

        // 4. Publish. Release: a reader that acquires write_count == n+1 also sees slot
        //    sequence 2n+2 (or later), so "write_count > n" means frame n was completed.
        header()->write_count.store(n + 1, std::memory_order_release);
        next_ = n + 1;
    }

    void close_ring() { do_close(); }

    // A newer generation now holds the name: mark this one superseded (before closed, both
    // release, so a reader that sees "closed" also sees why), then close it. The name is
    // not unlinked: it belongs to the new generation (name_still_ours() says so).
    void supersede() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (!base_) throw std::runtime_error("ring writer is closed");
            header()->superseded.store(1, std::memory_order_release);
        }
        do_close();
    }

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

    void do_close() {
        std::lock_guard<std::mutex> lock(mu_);
        if (!base_) return;
        // Release: a reader that sees "closed" (acquire) also sees the final write count.
        header()->writer_closed.store(1, std::memory_order_release);
        munmap(base_, size_);
        base_ = nullptr;
        // Unlink only in the process that created the ring: a forked child that merely
        // inherited this object must not remove its parent's ring. Readers that already
        // mapped the segment keep a valid mapping after the unlink.
        if (getpid() == owner_pid_ && name_still_ours()) shm_unlink(name_.c_str());
    }

    // After `replace=True` by a newer writer (or generation) the name belongs to a
    // different segment: closing this (older) one must not remove it.
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

}  // namespace hsring
