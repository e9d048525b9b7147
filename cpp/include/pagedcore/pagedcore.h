// Umbrella header of the pagedcore C++ library.
#pragma once

#include "pagedcore/block_pool.h"
#include "pagedcore/block_tables.h"
#include "pagedcore/memory_plan.h"
#include "pagedcore/prefix_hash.h"
#include "pagedcore/supported.h"
#include "pagedcore/types.h"
#include "pagedcore/version.h"
