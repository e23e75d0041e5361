// Stand-in for the CUDA header of this name when the kernels are built for the emulator.
#pragma once

#include "emulation/cuda_emulation.h"
