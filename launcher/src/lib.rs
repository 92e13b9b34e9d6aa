//! Launches dimstore fleets
