! dimstore: the dimstore client for Fortran (iso_c_binding over libdimstore, dimstore.h).
!
!   use dimstore
!   type(c_ptr) :: s
!   character(kind=c_char, len=DIMSTORE_KEY_MAX) :: key
!   real(8), target :: a(1000)
!   integer(c_size_t) :: n
!   if (dimstore_open_env(s) /= DIMSTORE_OK) stop 1
!   rc = dimstore_put(s, c_loc(a), int(sizeof(a), c_size_t), key, int(len(key), c_size_t))
!   rc = dimstore_get_into(s, key, c_loc(a), int(sizeof(a), c_size_t), n)
!   call dimstore_close(s)
!
! Every function returns DIMSTORE_OK (0) or a negative DIMSTORE_E_* status; the calling
! thread's message is copied by dimstore_last_error_into(buf, len(buf)) (NUL-terminated).
! Keys are C text: a key written by dimstore_put/dimstore_new_key ends with a NUL and can be
! passed back as is (or sent to other ranks as DIMSTORE_KEY_MAX characters); a key held as a
! Fortran string must be passed as trim(key)//c_null_char. Thread safety as in dimstore.h.
!
! Interfaces and constants only: nothing to link but libdimstore
! (`pkg-config --cflags --libs dimstore` also gives the -I for this module).
module dimstore
    use, intrinsic :: iso_c_binding
    implicit none
    private

    public :: c_ptr, c_null_ptr, c_loc, c_int, c_size_t, c_char, c_null_char, c_associated

    !> Longest key text, including its NUL.
    integer(c_size_t), parameter, public :: DIMSTORE_KEY_MAX = 320

    !> Statuses (dimstore.h enum dimstore_status).
    integer(c_int), parameter, public :: DIMSTORE_OK = 0
    integer(c_int), parameter, public :: DIMSTORE_E_NOT_FOUND = -1
    integer(c_int), parameter, public :: DIMSTORE_E_STORE_FULL = -2
    integer(c_int), parameter, public :: DIMSTORE_E_TIMEOUT = -3
    integer(c_int), parameter, public :: DIMSTORE_E_UNAUTHORIZED = -4
    integer(c_int), parameter, public :: DIMSTORE_E_CONNECTION_LOST = -5
    integer(c_int), parameter, public :: DIMSTORE_E_TOO_SMALL = -6
    integer(c_int), parameter, public :: DIMSTORE_E_BAD_ARGUMENT = -7
    integer(c_int), parameter, public :: DIMSTORE_E_INTERNAL = -8
    integer(c_int), parameter, public :: DIMSTORE_E_CLOSED = -9
    integer(c_int), parameter, public :: DIMSTORE_E_FORK = -10
    integer(c_int), parameter, public :: DIMSTORE_E_NOT_SET = -11
    integer(c_int), parameter, public :: DIMSTORE_E_ALREADY_SET = -12
    integer(c_int), parameter, public :: DIMSTORE_E_UNREACHABLE = -13
    integer(c_int), parameter, public :: DIMSTORE_E_CONFIG = -14
    integer(c_int), parameter, public :: DIMSTORE_E_EVICTED = -15

    !> A zero-copy view (dimstore_view_t): data/len valid until dimstore_view_release.
    !> dimstore_get_view fills it (or empties it on failure).
    type, bind(C), public :: dimstore_view_t
        type(c_ptr) :: data
        integer(c_size_t) :: len
        integer(c_int) :: mapped
        integer(c_int64_t) :: handle
    end type dimstore_view_t

    !> Space for an object written in place (dimstore_reservation_t), filled by
    !> dimstore_create; write up to cap bytes at data, then dimstore_seal or dimstore_abort.
    type, bind(C), public :: dimstore_reservation_t
        type(c_ptr) :: data
        integer(c_size_t) :: cap
        integer(c_int) :: mapped
        integer(c_int64_t) :: handle
    end type dimstore_reservation_t

    public :: dimstore_create, dimstore_seal, dimstore_abort
    public :: dimstore_open_env, dimstore_open, dimstore_close, dimstore_put, dimstore_get_into
    public :: dimstore_get_view, dimstore_view_release, dimstore_size, dimstore_exists
    public :: dimstore_evict, dimstore_new_key, dimstore_set, dimstore_put_batch
    public :: dimstore_get_batch_into, dimstore_last_error_into

    interface
        !> Opens a store from the DIMSTORE_* environment (fleet file, server, or spawn).
        integer(c_int) function dimstore_open_env(store) bind(C, name="dimstore_open_env")
            import :: c_int, c_ptr
            type(c_ptr), intent(out) :: store
        end function

        !> Opens a store whose local server is at `server` (host:port, NUL-terminated).
        integer(c_int) function dimstore_open(server, store) bind(C, name="dimstore_open")
            import :: c_int, c_ptr, c_char
            character(kind=c_char), intent(in) :: server(*)
            type(c_ptr), intent(out) :: store
        end function

        !> Closes a store (views stay valid until released).
        subroutine dimstore_close(store) bind(C, name="dimstore_close")
            import :: c_ptr
            type(c_ptr), value :: store
        end subroutine

        !> Stores len bytes at buf on this node's server; the key (with its NUL) goes to key.
        integer(c_int) function dimstore_put(store, buf, len, key, key_cap) &
                bind(C, name="dimstore_put")
            import :: c_int, c_ptr, c_size_t, c_char
            type(c_ptr), value :: store
            type(c_ptr), value :: buf
            integer(c_size_t), value :: len
            character(kind=c_char), intent(out) :: key(*)
            integer(c_size_t), value :: key_cap
        end function

        !> Fetches an object into buf (cap bytes); its size goes to len (also when too small).
        integer(c_int) function dimstore_get_into(store, key, buf, cap, len) &
                bind(C, name="dimstore_get_into")
            import :: c_int, c_ptr, c_size_t, c_char
            type(c_ptr), value :: store
            character(kind=c_char), intent(in) :: key(*)
            type(c_ptr), value :: buf
            integer(c_size_t), value :: cap
            integer(c_size_t), intent(out) :: len
        end function

        !> Fetches an object as a view (mapped on the owner's node).
        integer(c_int) function dimstore_get_view(store, key, view) &
                bind(C, name="dimstore_get_view")
            import :: c_int, c_ptr, c_char, dimstore_view_t
            type(c_ptr), value :: store
            character(kind=c_char), intent(in) :: key(*)
            type(dimstore_view_t), intent(out) :: view
        end function

        !> Releases a view and empties it.
        subroutine dimstore_view_release(view) bind(C, name="dimstore_view_release")
            import :: dimstore_view_t
            type(dimstore_view_t), intent(inout) :: view
        end subroutine

        !> The object's size, read from the key (no round trip).
        integer(c_int) function dimstore_size(key, len) bind(C, name="dimstore_size")
            import :: c_int, c_size_t, c_char
            character(kind=c_char), intent(in) :: key(*)
            integer(c_size_t), intent(out) :: len
        end function

        !> Whether the owner holds the object (exists = 1 or 0).
        integer(c_int) function dimstore_exists(store, key, exists) &
                bind(C, name="dimstore_exists")
            import :: c_int, c_ptr, c_char
            type(c_ptr), value :: store
            character(kind=c_char), intent(in) :: key(*)
            integer(c_int), intent(out) :: exists
        end function

        !> Evicts the object at its owner (DIMSTORE_E_NOT_FOUND if it had none).
        integer(c_int) function dimstore_evict(store, key) bind(C, name="dimstore_evict")
            import :: c_int, c_ptr, c_char
            type(c_ptr), value :: store
            character(kind=c_char), intent(in) :: key(*)
        end function

        !> Reserves a deferred key; gets on it wait until dimstore_set.
        integer(c_int) function dimstore_new_key(store, key, key_cap) &
                bind(C, name="dimstore_new_key")
            import :: c_int, c_ptr, c_size_t, c_char
            type(c_ptr), value :: store
            character(kind=c_char), intent(out) :: key(*)
            integer(c_size_t), value :: key_cap
        end function

        !> Sets a deferred key's object.
        integer(c_int) function dimstore_set(store, key, buf, len) bind(C, name="dimstore_set")
            import :: c_int, c_ptr, c_size_t, c_char
            type(c_ptr), value :: store
            character(kind=c_char), intent(in) :: key(*)
            type(c_ptr), value :: buf
            integer(c_size_t), value :: len
        end function

        !> Reserves cap bytes for an object written in place (the server's memory on its node).
        integer(c_int) function dimstore_create(store, cap, reservation) &
                bind(C, name="dimstore_create")
            import :: c_int, c_ptr, c_size_t, dimstore_reservation_t
            type(c_ptr), value :: store
            integer(c_size_t), value :: cap
            type(dimstore_reservation_t), intent(out) :: reservation
        end function

        !> Publishes the first len bytes of a reservation; its key (with its NUL) goes to key.
        integer(c_int) function dimstore_seal(reservation, len, key, key_cap) &
                bind(C, name="dimstore_seal")
            import :: c_int, c_size_t, c_char, dimstore_reservation_t
            type(dimstore_reservation_t), intent(inout) :: reservation
            integer(c_size_t), value :: len
            character(kind=c_char), intent(out) :: key(*)
            integer(c_size_t), value :: key_cap
        end function

        !> Gives a reservation back unsealed.
        subroutine dimstore_abort(reservation) bind(C, name="dimstore_abort")
            import :: dimstore_reservation_t
            type(dimstore_reservation_t), intent(inout) :: reservation
        end subroutine

        !> Stores count objects in one round trip; key i at keys((i-1)*key_stride+1:).
        integer(c_int) function dimstore_put_batch(store, count, bufs, lens, keys, key_stride) &
                bind(C, name="dimstore_put_batch")
            import :: c_int, c_ptr, c_size_t, c_char
            type(c_ptr), value :: store
            integer(c_size_t), value :: count
            type(c_ptr), intent(in) :: bufs(*)
            integer(c_size_t), intent(in) :: lens(*)
            character(kind=c_char), intent(out) :: keys(*)
            integer(c_size_t), value :: key_stride
        end function

        !> Fetches count objects; per-item sizes in lens and statuses in statuses.
        integer(c_int) function dimstore_get_batch_into(store, count, keys, key_stride, bufs, &
                caps, lens, statuses) bind(C, name="dimstore_get_batch_into")
            import :: c_int, c_ptr, c_size_t, c_char
            type(c_ptr), value :: store
            integer(c_size_t), value :: count
            character(kind=c_char), intent(in) :: keys(*)
            integer(c_size_t), value :: key_stride
            type(c_ptr), intent(in) :: bufs(*)
            integer(c_size_t), intent(in) :: caps(*)
            integer(c_size_t), intent(out) :: lens(*)
            integer(c_int), intent(out) :: statuses(*)
        end function

        !> Copies this thread's last error message (NUL-terminated, truncated to cap bytes);
        !> returns its full length.
        integer(c_size_t) function dimstore_last_error_into(buf, cap) &
                bind(C, name="dimstore_last_error_into")
            import :: c_size_t, c_char
            character(kind=c_char), intent(out) :: buf(*)
            integer(c_size_t), value :: cap
        end function
    end interface
end module dimstore
