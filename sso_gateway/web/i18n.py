"""The sign-in pages' words, in French (the default) and English."""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    "fr": {
        "title": "Connexion territoriale",
        "service": "Identité territoriale du GHT",
        "skip": "Aller au contenu",
        "signin_heading": "Connectez-vous",
        "signin_intro": "Une seule connexion pour les applications partagées du groupement hospitalier.",
        "for_app": "pour accéder à",
        "login_label": "Identifiant",
        "login_help": "Votre identifiant territorial, votre adresse e-mail, ou ÉTABLISSEMENT\\identifiant.",
        "password_label": "Mot de passe",
        "password_help": "Le mot de passe de votre session hospitalière.",
        "submit": "Se connecter",
        "invalid": "Identifiant ou mot de passe incorrect.",
        "throttled": "Trop de tentatives. Réessayez dans {seconds} secondes.",
        "site_heading": "Où travaillez-vous aujourd'hui ?",
        "site_intro": "Les applications sauront dans quel établissement vous exercez.",
        "site_legend": "Établissement",
        "site_last": "(dernier choix)",
        "site_submit": "Continuer",
        "site_done": "Vous travaillez maintenant à : {site}.",
        "signed_in": "Vous êtes connecté(e).",
        "change_site": "Changer d'établissement",
        "logout_heading": "Déconnexion",
        "logout_confirm": "Voulez-vous vous déconnecter de toutes les applications du groupement ?",
        "logout_submit": "Se déconnecter",
        "logged_out": "Vous êtes déconnecté(e) de toutes les applications. Vous pouvez laisser le poste.",
        "error_heading": "La demande ne peut pas aboutir",
        "error_expired": "Cette page a expiré. Revenez à l'application et recommencez.",
        "error_invalid_request": "L'application a envoyé une demande invalide : {detail}",
        "error_csrf": "Le formulaire a expiré ou ne vient pas de cette page. Recommencez.",
        "switch_language": "English",
    },
    "en": {
        "title": "Territorial sign-in",
        "service": "GHT territorial identity",
        "skip": "Skip to content",
        "signin_heading": "Sign in",
        "signin_intro": "One sign-in for the hospital group's shared applications.",
        "for_app": "to use",
        "login_label": "Login",
        "login_help": "Your territorial login, your email address, or HOSPITAL\\login.",
        "password_label": "Password",
        "password_help": "The password of your hospital account.",
        "submit": "Sign in",
        "invalid": "Wrong login or password.",
        "throttled": "Too many attempts. Try again in {seconds} seconds.",
        "site_heading": "Where are you working today?",
        "site_intro": "Applications will know which hospital you are working at.",
        "site_legend": "Hospital",
        "site_last": "(last choice)",
        "site_submit": "Continue",
        "site_done": "You are now working at: {site}.",
        "signed_in": "You are signed in.",
        "change_site": "Change hospital",
        "logout_heading": "Sign out",
        "logout_confirm": "Do you want to sign out of every application of the hospital group?",
        "logout_submit": "Sign out",
        "logged_out": "You are signed out of every application. You may leave the workstation.",
        "error_heading": "The request cannot be completed",
        "error_expired": "This page has expired. Go back to the application and start again.",
        "error_invalid_request": "The application sent an invalid request: {detail}",
        "error_csrf": "The form has expired or does not come from this page. Please start again.",
        "switch_language": "Français",
    },
}


def pick_locale(*candidates: str | None, accept_language: str = "", default: str = "fr") -> str:
    """The first supported locale among explicit choices, then the browser's Accept-Language."""
    for candidate in candidates:
        for tag in (candidate or "").replace(",", " ").split():
            lang = tag.split("-")[0].lower()
            if lang in MESSAGES:
                return lang
    for part in accept_language.split(","):
        lang = part.split(";")[0].strip().split("-")[0].lower()
        if lang in MESSAGES:
            return lang
    return default
