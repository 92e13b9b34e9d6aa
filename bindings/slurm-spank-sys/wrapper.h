/* The SPANK plugin API of the system's Slurm (libslurm-dev). */
#include <slurm/spank.h>
