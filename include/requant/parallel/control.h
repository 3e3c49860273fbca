#pragma once
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <boost/archive/binary_iarchive.hpp>
#include <boost/archive/binary_oarchive.hpp>
#include <boost/serialization/string.hpp>
#include <boost/serialization/vector.hpp>

// The control plane: small structured messages between ranks (the parsed job from the
// coordinator, per-rank status and manifests back to it), serialized with Boost.Serialization
// and moved with Boost.MPI over MPI_COMM_WORLD. Collective: every rank calls in the same order.

namespace rq::parallel {

// What a rank reports to the coordinator at the end of a phase.
struct RankStatus {
    int         rank = 0;
    std::string host;
    int64_t     layer_begin = 0, layer_end = 0;  // the stage's decoder layers
    int64_t     peak_rss  = 0;                   // bytes
    double      wall_s    = 0;                   // schedule wall time
    double      busy_s    = 0;                   // time spent computing (not waiting)
    int64_t     n_tensors = 0;                   // manifest: tensors this rank loaded
    int64_t     n_bytes   = 0;                   // manifest: their bytes as stored

    template <class Ar>
    void serialize(Ar& ar, unsigned /*version*/) {
        // clang-format off
        ar & rank & host & layer_begin & layer_end & peak_rss & wall_s & busy_s & n_tensors & n_bytes;
        // clang-format on
    }
};

// Raw byte movement (Boost.MPI underneath).
void                     broadcast_bytes(std::string& bytes, int root);
std::vector<std::string> gather_bytes(const std::string& mine, int root);  // empty off root

template <class T>
void broadcast_object(T& obj, int root, int my_rank) {
    std::string bytes;
    if (my_rank == root) {
        std::ostringstream              os;
        boost::archive::binary_oarchive ar(os);
        ar << obj;
        bytes = os.str();
    }
    broadcast_bytes(bytes, root);
    if (my_rank != root) {
        std::istringstream              is(bytes);
        boost::archive::binary_iarchive ar(is);
        ar >> obj;
    }
}

template <class T>
std::vector<T> gather_objects(const T& mine, int root) {
    std::ostringstream os;
    {
        boost::archive::binary_oarchive ar(os);
        ar << mine;
    }
    std::vector<T> out;
    for (const auto& b : gather_bytes(os.str(), root)) {
        std::istringstream              is(b);
        boost::archive::binary_iarchive ar(is);
        out.emplace_back();
        ar >> out.back();
    }
    return out;
}

}  // namespace rq::parallel
