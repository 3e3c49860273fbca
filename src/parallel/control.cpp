// Control-plane byte movement over Boost.MPI (requant/parallel/control.h).
#include "requant/parallel/control.h"

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>

namespace rq::parallel {

void broadcast_bytes(std::string& bytes, int root) {
    boost::mpi::communicator world;  // attaches to MPI_COMM_WORLD, initialised by MpiEnv
    boost::mpi::broadcast(world, bytes, root);
}

std::vector<std::string> gather_bytes(const std::string& mine, int root) {
    boost::mpi::communicator world;
    std::vector<std::string> all;
    boost::mpi::gather(world, mine, all, root);
    return all;
}

}  // namespace rq::parallel
