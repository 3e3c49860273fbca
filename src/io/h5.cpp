// HDF5 files over the C API (requant/io/h5.h). Each C call is checked exactly once by `check`,
// which folds HDF5's error stack into the message (HDF5ErrMapper's idea in HighFive).
#include "requant/io/h5.h"
#include "requant/io/atomic_file.h"

#include <ATen/ATen.h>
#include <hdf5.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "requant/io/digest.h"

namespace rq::io {
namespace {

// HDF5 prints its error stack to stderr by default; we report it in the exception instead.
void silence_hdf5() {
    static const bool once = [] {
        H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
        return true;
    }();
    (void)once;
}

// The top of HDF5's error stack, and the system's reason where a file driver gave one (its
// "error message = '...'": "No space left on device").
struct ErrorStack {
    std::string descs, last, system;
};

herr_t collect(unsigned n, const H5E_error2_t* e, void* data) {
    auto* s = static_cast<ErrorStack*>(data);
    if (e->desc == nullptr || *e->desc == 0) return 0;
    const std::string d   = e->desc;
    const auto        why = d.find("error message = '");
    if (why != std::string::npos && s->system.empty()) {
        const auto b = why + 17;
        s->system    = d.substr(b, d.find('\'', b) - b);
    }
    if (n < 4 && d != s->last) s->descs += (s->descs.empty() ? "" : "; ") + d;
    s->last = d;
    return 0;
}

std::string hdf5_stack() {
    ErrorStack s;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect, &s);
    H5Eclear2(H5E_DEFAULT);
    return (s.system.empty() ? "" : ": " + s.system) +
           (s.descs.empty() ? "" : " (HDF5: " + s.descs + ")");
}

template <class T>
T check(T id, const std::string& file, const std::string& what) {
    if (id < 0) throw H5Error(file + ": " + what + hdf5_stack());
    return id;
}

// Closes an hid_t when it goes out of scope.
struct Handle {
    hid_t id;
    herr_t (*close)(hid_t);
    ~Handle() {
        if (id >= 0) close(id);
    }
};

// IEEE binary16, little endian: h5py reads it as numpy float16, h5dump prints its values.
hid_t half_type() {
    static const hid_t t = [] {
        const hid_t h = H5Tcopy(H5T_IEEE_F32LE);
        H5Tset_fields(h, 15, 10, 5, 0, 10);
        H5Tset_size(h, 2);
        H5Tset_ebias(h, 15);
        H5Tlock(h);
        return h;
    }();
    return t;
}

hid_t h5_type(at::ScalarType s, const std::string& file, const std::string& ds) {
    switch (s) {
        case at::kHalf:
            return half_type();
        case at::kFloat:
            return H5T_IEEE_F32LE;
        case at::kDouble:
            return H5T_IEEE_F64LE;
        case at::kInt:
            return H5T_STD_I32LE;
        case at::kLong:
            return H5T_STD_I64LE;
        case at::kByte:
        case at::kBool:
            return H5T_STD_U8LE;
        default:
            throw H5Error(file + ": " + ds + ": dtype " + std::string(c10::toString(s)) +
                          " cannot be stored (float16/32/64, int32, int64, uint8, bool)");
    }
}

at::ScalarType scalar_type(hid_t type, const std::string& file, const std::string& ds) {
    const H5T_class_t cls  = H5Tget_class(type);
    const size_t      size = H5Tget_size(type);
    if (cls == H5T_FLOAT && size == 2) return at::kHalf;
    if (cls == H5T_FLOAT && size == 4) return at::kFloat;
    if (cls == H5T_FLOAT && size == 8) return at::kDouble;
    if (cls == H5T_INTEGER) {
        const bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
        if (is_signed && size == 4) return at::kInt;
        if (is_signed && size == 8) return at::kLong;
        if (!is_signed && size == 1) return at::kByte;
    }
    throw H5Error(file + ": " + ds + ": stored type is not float16/32/64, int32/64 or uint8");
}

hid_t native(at::ScalarType s) {
    switch (s) {
        case at::kHalf:
            return half_type();
        case at::kFloat:
            return H5T_NATIVE_FLOAT;
        case at::kDouble:
            return H5T_NATIVE_DOUBLE;
        case at::kInt:
            return H5T_NATIVE_INT32;
        case at::kLong:
            return H5T_NATIVE_INT64;
        default:
            return H5T_NATIVE_UINT8;
    }
}

// Object creation properties without modification times, so that the same content written in
// the same order gives the same bytes (a resumed run's checkpoint equals an uninterrupted one).
hid_t untimed(hid_t cls) {
    const hid_t p = H5Pcreate(cls);
    if (p >= 0) H5Pset_obj_track_times(p, 0);
    return p;
}

// The digest of a tensor's bytes as stored, kept as the dataset's "sha256" attribute.
std::string digest(const at::Tensor& c) {
    return sha256_hex(c.data_ptr(), std::size_t(c.numel()) * c.element_size());
}

// Flushes a closed file's data to the disk (the rename that follows must not outrun it).

}  // namespace

void h5_disable_free_lists() {
    H5set_free_list_limits(0, 0, 0, 0, 0, 0);
}

struct H5File::Impl {
    std::string path, tmp;  // tmp: the name written to until commit() (Create only)
    hid_t       file      = -1;
    bool        committed = false;

    // Closes; an uncommitted Create leaves nothing behind. Here rather than in ~H5File so that
    // a moved-over H5File cleans up too.
    ~Impl() {
        if (file >= 0) H5Fclose(file);
        if (!committed && !tmp.empty()) std::remove(tmp.c_str());
    }

    // Creates every missing group on the way to `object`'s parent, one level at a time.
    void make_parents(const std::string& object) {
        Handle      gcpl{check(untimed(H5P_GROUP_CREATE), path, "H5Pcreate"), H5Pclose};
        std::size_t pos = 1;
        for (;;) {
            const auto next = object.find('/', pos);
            if (next == std::string::npos) return;
            const std::string part = object.substr(0, next);
            if (!exists(part)) {
                const Handle g{
                    check(H5Gcreate2(file, part.c_str(), H5P_DEFAULT, gcpl.id, H5P_DEFAULT), path,
                          "cannot create group " + part),
                    H5Gclose};
            }
            pos = next + 1;
        }
    }
    bool exists(const std::string& object) const {
        if (object == "/") return true;
        // H5Lexists fails on a missing intermediate group: walk the path one part at a time.
        std::size_t pos = 1;
        while (pos <= object.size()) {
            const auto        next = object.find('/', pos);
            const std::string part = object.substr(0, next);
            if (H5Lexists(file, part.c_str(), H5P_DEFAULT) <= 0) return false;
            if (next == std::string::npos) break;
            pos = next + 1;
        }
        return H5Oexists_by_name(file, object.c_str(), H5P_DEFAULT) > 0;
    }
    hid_t open_object(const std::string& object) const {
        if (!exists(object)) throw H5Error(path + ": no object " + object);
        return check(H5Oopen(file, object.c_str(), H5P_DEFAULT), path, "cannot open " + object);
    }
    // Opens attribute `name` of `object` for writing with `type`, replacing an existing one.
    void write_attr(const std::string& object, const std::string& name, hid_t type,
                    const void* data) {
        Handle obj{open_object(object), H5Oclose};
        if (H5Aexists(obj.id, name.c_str()) > 0)
            check(H5Adelete(obj.id, name.c_str()), path, "cannot replace attribute " + name);
        Handle space{check(H5Screate(H5S_SCALAR), path, "H5Screate"), H5Sclose};
        Handle a{check(H5Acreate2(obj.id, name.c_str(), type, space.id, H5P_DEFAULT, H5P_DEFAULT),
                       path, object + ": cannot create attribute " + name),
                 H5Aclose};
        check(H5Awrite(a.id, type, data), path, object + ": cannot write attribute " + name);
    }
    hid_t open_attr(const std::string& object, const std::string& name) const {
        Handle obj{open_object(object), H5Oclose};
        if (H5Aexists(obj.id, name.c_str()) <= 0)
            throw H5Error(path + ": " + object + " has no attribute " + name);
        return check(H5Aopen(obj.id, name.c_str(), H5P_DEFAULT), path,
                     object + ": cannot open attribute " + name);
    }
};

H5File::H5File(const std::string& path, Mode mode) : impl_(std::make_unique<Impl>()) {
    silence_hdf5();
    impl_->path = path;
    if (mode == Mode::Create) {
        impl_->tmp = path + ".tmp";
        // File format 1.8 or later: every piece of metadata (object headers with their
        // attributes and link names, B-trees, heaps) carries a checksum, so a damaged attribute
        // or name fails to read as the datasets' SHA-256 digests fail on damaged data.
        Handle fapl{check(H5Pcreate(H5P_FILE_ACCESS), path, "H5Pcreate"), H5Pclose};
        check(H5Pset_libver_bounds(fapl.id, H5F_LIBVER_V18, H5F_LIBVER_LATEST), path,
              "H5Pset_libver_bounds");
        // The root group's object header would carry times in this format: leave them out.
        Handle fcpl{check(untimed(H5P_FILE_CREATE), path, "H5Pcreate"), H5Pclose};
        impl_->file = check(H5Fcreate(impl_->tmp.c_str(), H5F_ACC_TRUNC, fcpl.id, fapl.id), path,
                            "cannot create (as " + impl_->tmp + ")");
    } else {
        if (!std::filesystem::exists(path)) throw H5Error(path + ": no such file");
        impl_->file = check(
            H5Fopen(path.c_str(), mode == Mode::Read ? H5F_ACC_RDONLY : H5F_ACC_RDWR, H5P_DEFAULT),
            path, "cannot open as HDF5");
        impl_->committed = true;
    }
}

H5File::~H5File() = default;

H5File::H5File(H5File&&) noexcept            = default;
H5File& H5File::operator=(H5File&&) noexcept = default;

const std::string& H5File::path() const {
    return impl_->path;
}

void H5File::write(const std::string& dataset, const at::Tensor& t) {
    const std::string& f = impl_->path;
    if (impl_->exists(dataset)) throw H5Error(f + ": " + dataset + " already exists");
    const hid_t ftype = h5_type(t.scalar_type(), f, dataset);
    at::Tensor  c     = t.cpu().contiguous();
    if (c.scalar_type() == at::kBool) c = c.to(at::kByte);
    std::vector<hsize_t> dims(c.sizes().begin(), c.sizes().end());
    impl_->make_parents(dataset);
    Handle space{check(c.dim() == 0 ? H5Screate(H5S_SCALAR)
                                    : H5Screate_simple(int(dims.size()), dims.data(), nullptr),
                       f, "H5Screate"),
                 H5Sclose};
    Handle dcpl{check(untimed(H5P_DATASET_CREATE), f, "H5Pcreate"), H5Pclose};
    {
        Handle ds{check(H5Dcreate2(impl_->file, dataset.c_str(), ftype, space.id, H5P_DEFAULT,
                                   dcpl.id, H5P_DEFAULT),
                        f, "cannot create dataset " + dataset),
                  H5Dclose};
        if (c.numel() > 0)
            check(H5Dwrite(ds.id, native(c.scalar_type()), H5S_ALL, H5S_ALL, H5P_DEFAULT,
                           c.data_ptr()),
                  f, "cannot write dataset " + dataset);
    }
    set_attr(dataset, "sha256", digest(c));
}

namespace {
// A dataset's dimensions from its open handle.
std::vector<int64_t> dims_of(hid_t ds, const std::string& f) {
    Handle               space{check(H5Dget_space(ds), f, "H5Dget_space"), H5Sclose};
    const int            rank = check(H5Sget_simple_extent_ndims(space.id), f, "H5Sget_ndims");
    std::vector<hsize_t> dims(static_cast<std::size_t>(rank));
    check(H5Sget_simple_extent_dims(space.id, dims.data(), nullptr), f, "H5Sget_dims");
    return std::vector<int64_t>(dims.begin(), dims.end());
}
}  // namespace

at::Tensor H5File::read(const std::string& dataset) const {
    const std::string& f = impl_->path;
    if (!impl_->exists(dataset)) throw H5Error(f + ": no dataset " + dataset);
    Handle               ds{check(H5Dopen2(impl_->file, dataset.c_str(), H5P_DEFAULT), f,
                                  "cannot open dataset " + dataset),
              H5Dclose};
    Handle               type{check(H5Dget_type(ds.id), f, "H5Dget_type"), H5Tclose};
    const at::ScalarType st  = scalar_type(type.id, f, dataset);
    at::Tensor           out = at::empty(dims_of(ds.id, f), at::dtype(st));
    if (out.numel() > 0)
        check(H5Dread(ds.id, native(st), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data_ptr()), f,
              "cannot read dataset " + dataset);
    if (H5Aexists(ds.id, "sha256") > 0 && attr_string(dataset, "sha256") != digest(out))
        throw H5Error(f + ": " + dataset + ": checksum mismatch (the file is damaged)");
    return out;
}

std::vector<int64_t> H5File::shape(const std::string& dataset) const {
    const std::string& f = impl_->path;
    if (!impl_->exists(dataset)) throw H5Error(f + ": no dataset " + dataset);
    Handle ds{check(H5Dopen2(impl_->file, dataset.c_str(), H5P_DEFAULT), f,
                    "cannot open dataset " + dataset),
              H5Dclose};
    return dims_of(ds.id, f);
}

std::vector<std::string> H5File::children(const std::string& group) const {
    const std::string& f = impl_->path;
    Handle             g{
        check(H5Gopen2(impl_->file, group.c_str(), H5P_DEFAULT), f, "cannot open group " + group),
        H5Gclose};
    H5G_info_t info;
    check(H5Gget_info(g.id, &info), f, "H5Gget_info");
    std::vector<std::string> out;
    for (hsize_t i = 0; i < info.nlinks; ++i) {
        const ssize_t n = check(
            H5Lget_name_by_idx(g.id, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT),
            f, "H5Lget_name_by_idx");
        std::string name(std::size_t(n) + 1, '\0');
        H5Lget_name_by_idx(g.id, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(),
                           H5P_DEFAULT);
        name.pop_back();
        out.push_back(name);
    }
    return out;
}

bool H5File::exists(const std::string& object) const {
    return impl_->exists(object);
}

void H5File::set_attr(const std::string& object, const std::string& name, double v) {
    impl_->write_attr(object, name, H5T_NATIVE_DOUBLE, &v);
}
void H5File::set_attr(const std::string& object, const std::string& name, int64_t v) {
    impl_->write_attr(object, name, H5T_NATIVE_INT64, &v);
}
void H5File::set_attr(const std::string& object, const std::string& name, const std::string& v) {
    Handle type{check(H5Tcopy(H5T_C_S1), impl_->path, "H5Tcopy"), H5Tclose};
    check(H5Tset_size(type.id, v.empty() ? 1 : v.size()), impl_->path, "H5Tset_size");
    check(H5Tset_cset(type.id, H5T_CSET_UTF8), impl_->path, "H5Tset_cset");
    check(H5Tset_strpad(type.id, H5T_STR_NULLPAD), impl_->path, "H5Tset_strpad");
    impl_->write_attr(object, name, type.id, v.empty() ? "" : v.data());
}

double H5File::attr_double(const std::string& object, const std::string& name) const {
    Handle a{impl_->open_attr(object, name), H5Aclose};
    double v = 0;
    check(H5Aread(a.id, H5T_NATIVE_DOUBLE, &v), impl_->path, "cannot read attribute " + name);
    return v;
}
int64_t H5File::attr_int(const std::string& object, const std::string& name) const {
    Handle  a{impl_->open_attr(object, name), H5Aclose};
    int64_t v = 0;
    check(H5Aread(a.id, H5T_NATIVE_INT64, &v), impl_->path, "cannot read attribute " + name);
    return v;
}
std::string H5File::attr_string(const std::string& object, const std::string& name) const {
    Handle a{impl_->open_attr(object, name), H5Aclose};
    Handle type{check(H5Aget_type(a.id), impl_->path, "H5Aget_type"), H5Tclose};
    if (H5Tget_class(type.id) != H5T_STRING)
        throw H5Error(impl_->path + ": " + object + " attribute " + name + " is not a string");
    if (H5Tis_variable_str(type.id) > 0) {  // h5py's default string attributes
        char* p = nullptr;
        check(H5Aread(a.id, type.id, &p), impl_->path, "cannot read attribute " + name);
        std::string s = p ? p : "";
        H5free_memory(p);
        return s;
    }
    std::string s(H5Tget_size(type.id), '\0');
    check(H5Aread(a.id, type.id, s.data()), impl_->path, "cannot read attribute " + name);
    while (!s.empty() && s.back() == '\0') s.pop_back();
    return s;
}

void H5File::link_external(const std::string& link, const std::string& file,
                           const std::string& object) {
    impl_->make_parents(link);
    check(H5Lcreate_external(file.c_str(), object.c_str(), impl_->file, link.c_str(), H5P_DEFAULT,
                             H5P_DEFAULT),
          impl_->path, "cannot link " + link + " to " + file + ":" + object);
}

void H5File::commit() {
    if (impl_->file >= 0) {
        check(H5Fflush(impl_->file, H5F_SCOPE_GLOBAL), impl_->path, "cannot flush");
        const herr_t rc = H5Fclose(impl_->file);
        impl_->file     = -1;
        check(rc, impl_->path, "cannot close");
    }
    if (!impl_->committed && !impl_->tmp.empty()) {
        fsync_file(impl_->tmp);  // a late write error (full disk, NFS) throws here
        std::error_code ec;
        std::filesystem::rename(impl_->tmp, impl_->path, ec);
        if (ec)
            throw H5Error(impl_->path + ": cannot rename from " + impl_->tmp + ": " + ec.message());
        fsync_dir(std::filesystem::path(impl_->path).parent_path().string());  // the rename
    }
    impl_->committed = true;
}

}  // namespace rq::io
