#pragma once
#include <string>

#include "requant/error.h"

// RQ_MPI_CHECK(call): throws MpiError with file:line and MPI's error string when `call` does
// not return MPI_SUCCESS. Include <mpi.h> before using it (this header does not).

namespace rq::parallel {
std::string mpi_error_string(int code);  // MPI_Error_string, in mpi_env.cpp
}

#define RQ_MPI_CHECK(call)                                                                       \
    do {                                                                                         \
        const int rq_mpi_rc_ = (call);                                                           \
        if (rq_mpi_rc_ != 0)                                                                     \
            throw ::rq::MpiError(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " + \
                                 #call +                                                         \
                                 " failed: " + ::rq::parallel::mpi_error_string(rq_mpi_rc_));    \
    } while (0)
