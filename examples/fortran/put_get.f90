! put_get: rank 0 puts a real(8) array into dimstore, the key is broadcast, and the last rank
! gets it back and checks it (with one rank, the same rank does both).
!
!   make && dimstore-launch run --local 2 -- mpirun -n 2 ./put_get
program put_get
    use mpi
    use dimstore
    implicit none
    integer, parameter :: n = 50000
    real(8), target :: a(n), b(n)
    character(kind=c_char, len=DIMSTORE_KEY_MAX) :: key
    character(kind=c_char, len=512) :: message
    type(c_ptr) :: s
    integer(c_size_t) :: got, need, msg_len
    integer(c_int) :: rc, present
    integer :: rank, nranks, ierr, i, last

    call mpi_init(ierr)
    call mpi_comm_rank(MPI_COMM_WORLD, rank, ierr)
    call mpi_comm_size(MPI_COMM_WORLD, nranks, ierr)
    last = nranks - 1

    rc = dimstore_open_env(s)
    call check(rc, 'open')

    if (rank == 0) then
        a = [(sqrt(real(i, 8)), i = 1, n)]
        rc = dimstore_put(s, c_loc(a), int(8 * n, c_size_t), key, DIMSTORE_KEY_MAX)
        call check(rc, 'put')
        print '(a,i0,a,a)', 'rank 0 put ', 8 * n, ' bytes: ', key(1:index(key, c_null_char) - 1)
    end if
    call mpi_bcast(key, int(DIMSTORE_KEY_MAX), MPI_CHARACTER, 0, MPI_COMM_WORLD, ierr)

    if (rank == last) then
        rc = dimstore_size(key, need)
        call check(rc, 'size')
        ! Too small a buffer: the size needed comes back.
        rc = dimstore_get_into(s, key, c_loc(b), 8_c_size_t, got)
        if (rc /= DIMSTORE_E_TOO_SMALL .or. got /= need) then
            print *, 'expected DIMSTORE_E_TOO_SMALL and the size needed, got', rc, got
            call mpi_abort(MPI_COMM_WORLD, 1, ierr)
        end if
        rc = dimstore_get_into(s, key, c_loc(b), int(8 * n, c_size_t), got)
        call check(rc, 'get_into')
        if (got /= 8 * n .or. any(b /= [(sqrt(real(i, 8)), i = 1, n)])) then
            print *, 'rank', rank, ': the array read back differs'
            call mpi_abort(MPI_COMM_WORLD, 1, ierr)
        end if
        print '(a,i0,a,i0,a)', 'rank ', rank, ' got ', got, ' bytes back: identical'
        rc = dimstore_evict(s, key)
        call check(rc, 'evict')
        rc = dimstore_exists(s, key, present)
        call check(rc, 'exists')
        if (present /= 0) call mpi_abort(MPI_COMM_WORLD, 1, ierr)
    end if
    call dimstore_close(s)
    call mpi_barrier(MPI_COMM_WORLD, ierr)
    if (rank == 0) print '(a)', 'put_get (Fortran): ok'
    call mpi_finalize(ierr)

contains

    subroutine check(status, what)
        integer(c_int), intent(in) :: status
        character(len=*), intent(in) :: what
        if (status /= DIMSTORE_OK) then
            msg_len = dimstore_last_error_into(message, int(len(message), c_size_t))
            print '(a,i0,a,a,a,i0,a,a)', 'rank ', rank, ': ', what, ' failed (', status, '): ', &
                message(1:min(int(msg_len), len(message) - 1))
            call mpi_abort(MPI_COMM_WORLD, 1, ierr)
        end if
    end subroutine check
end program put_get
