// hepascope native frame ring: one writer, many readers, in POSIX shared memory.
//
// The grabber (writer), inference and recorder (readers) can be separate processes. The
// writer never blocks: it overwrites the oldest slot. Every slot is guarded by a seqlock
// (an odd sequence means "being written"), so a reader detects a slot that was overwritten
// while it was copying and never returns a torn frame. Layout and the memory-model recipe
// of the racing copies: ring_layout.hpp.
//
// Frame number n (0-based count of writes) lives in slot n % N. Its slot sequence is
// 2n+1 while the writer copies it and 2n+2 once it is complete: the sequence therefore
// also names the generation, and a reader that wants frame n accepts the slot only if it
// reads exactly 2n+2 both before and after its copy.
//
// A ring has generations: when the frame geometry changes, the writer creates a new
// segment under the same name (sized for the new frames) and then marks the old one
// superseded; readers see the mark, finish the old segment and re-open the name.
//
// The segment's memory is reserved when it is created (posix_fallocate): a full /dev/shm
// is an error at start, never a SIGBUS at the first write into a page tmpfs cannot back.

#include "ring_layout.hpp"
#include "ring_reader.hpp"
#include "ring_writer.hpp"

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <array>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>

namespace nb = nanobind;
using namespace hsring;

namespace {

// -----------------------------------------------------------------------------------------
// Python bindings
// -----------------------------------------------------------------------------------------

using InImage = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;

void py_write(Writer &w, InImage img, uint64_t frame_seq, int64_t t_capture_ns,
              std::optional<double> pts, const std::string &source_id) {
    uint32_t c;
    if (img.ndim() == 2)
        c = 1;
    else if (img.ndim() == 3 && img.shape(2) >= 1 && img.shape(2) <= kMaxChannels)
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

// (version, writer_pid, writer_start, writer_pidns) of the segment `name`; None when it is
// not an initialised hepascope ring (a creator still sizing it, or a foreign object).
// Layout 1 had no start time nor namespace: 0 (unknown) for those.
nb::object py_peek(const std::string &name) {
    std::optional<std::array<uint64_t, 4>> got;
    {
        nb::gil_scoped_release release;
        got = peek_owner(name);
    }
    if (!got) return nb::none();
    const auto &g = *got;
    return nb::make_tuple(g[0], int64_t(g[1]), g[2], g[3]);
}

}  // namespace

NB_MODULE(ring_native, m) {
    m.doc() = "Native shared-memory frame ring (one writer, many readers, seqlock slots).";
    m.attr("LAYOUT_VERSION") = kVersion;
    m.attr("SLOT_OVERHEAD") = sizeof(SlotHeader);
    m.attr("ALIGN") = kAlign;
    nb::exception<NotFound>(m, "NotFoundError", PyExc_RuntimeError);

    m.def("slot_stride", &stride_for, nb::arg("slot_bytes"),
          "Bytes one slot of `slot_bytes` pixel capacity occupies in the segment.");
    m.def("peek", &py_peek, nb::arg("name"),
          "(version, writer_pid, writer_start, writer_pidns) of ring `name`, or None.");

    nb::class_<Writer>(m, "Writer")
        .def(
            "__init__",
            [](Writer *w, const std::string &name, uint32_t slots, uint64_t slot_bytes,
               bool replace, uint64_t generation, uint64_t frames_before, uint64_t owner_start,
               uint64_t owner_pidns) {
                nb::gil_scoped_release release;
                new (w) Writer(name, slots, slot_bytes, replace, generation, frames_before,
                               Owner{owner_start, owner_pidns});
            },
            nb::arg("name"), nb::arg("slots"), nb::arg("slot_bytes"),
            nb::arg("replace") = false, nb::arg("generation") = 0,
            nb::arg("frames_before") = 0, nb::arg("owner_start") = 0,
            nb::arg("owner_pidns") = 0)
        .def("write", &py_write, nb::arg("image"), nb::arg("seq"), nb::arg("t_capture_ns"),
             nb::arg("pts").none(), nb::arg("source_id"))
        .def("close", &Writer::close_ring, nb::call_guard<nb::gil_scoped_release>())
        .def("supersede", &Writer::supersede, nb::call_guard<nb::gil_scoped_release>())
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
        .def_prop_ro("generation", &Reader::generation)
        .def_prop_ro("frames_before", &Reader::frames_before)
        .def_prop_ro("owner", [](Reader &r) {
            auto o = r.owner();
            return nb::make_tuple(int64_t(o[0]), o[1], o[2]);
        })
        .def_prop_ro("drops", &Reader::drops)
        .def_prop_ro("torn", &Reader::torn)
        .def_prop_ro("cursor", &Reader::cursor)
        .def_prop_ro("written", &Reader::written)
        .def_prop_ro("writer_closed", &Reader::writer_closed)
        .def_prop_ro("superseded", &Reader::superseded)
        .def_prop_ro("closed", &Reader::closed);
}
